"""The search: Ray Tune runs the trials that Optuna's TPE samples define-by-run, ASHA stops poor
trials early. The only package that imports Ray (its API moves between releases; pinned in
pyproject.toml): `_trial` runs in the workers, `_searcher` samples and records the trials, `_run`
starts Ray and runs the search, `_seeded` re-trains fixed recipes over seeds (confirmation,
ablation), `_nodes` deals with a cluster's nodes.

What is added to the glue a user writes by hand, and why:
- warm workers: actors are reused between trials (`reuse_actors`) and each worker process imports
  torch and loads the data set once, in a setup hook, instead of once per trial;
- the Optuna study lives in a journal file beside the search (autotrick.study), and every trial is
  told to it with its outcome through Optuna's ask-and-tell interface (a NaN or a failure is FAIL, an ASHA stop is
  PRUNED: Ray's OptunaSearch leaves a NaN trial RUNNING), so an interrupted search resumes from it
  without losing or repeating trials;
- the first trial is the baseline (every trick off), so each search says what its tricks gained;
- an interrupted `fit()` returns normally: the trial count is checked, not trusted;
- GPUs by default: `gpus_per_trial=None` (auto, on a cluster) is settled once connected: one GPU
  per trial when the cluster has one, none otherwise (search_options.py: the device follows).
"""


from __future__ import annotations

import os

# Ray reads these when it is imported and when workers start: no per-trial CSV/JSON/TensorBoard
# files (MLflow gets everything from tracking.py). Token authentication: `ray start --head` turns
# it on when a token is at hand (Ray 2.60: `ray get-auth-token --generate` keeps one in
# ~/.ray/auth_token), but a driver sends it only with RAY_AUTH_MODE=token, read on import: with a
# token at hand, send it (a cluster without authentication accepts it too); without one, skip the
# token set-up of a local cluster. Where Ray looks for a token (docs, ray-security/token-auth):
# RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "token" if os.environ.get("RAY_AUTH_TOKEN")
                      or os.environ.get("RAY_AUTH_TOKEN_PATH")
                      or os.path.isfile(os.path.expanduser("~/.ray/auth_token")) else "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# autotrick resumes from its Optuna study, not from Ray's experiment state: snapshot it rarely.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "300")
# An attempt to reach a GCS gives up after 10 s, not Ray's 30 (read when Ray is imported; see
# _CONNECT_ENV): with one attempt, an --address that answers but is not Ray's fails in ~21 s.
os.environ.setdefault("RAY_py_gcs_connect_timeout_s", "10")

from autotrick.cluster import check_address
from autotrick.search._nodes import describe_cluster
from autotrick.search._run import run_search
from autotrick.search._seeded import SeededRun, ray_session, run_seeded
from autotrick.search._trial import run_one_trial, saved_model_path, warm_worker
from autotrick.search_options import SearchOptions

__all__ = ["SearchOptions", "SeededRun", "check_address", "describe_cluster", "ray_session", "run_one_trial",
           "run_search", "run_seeded", "saved_model_path", "warm_worker"]
