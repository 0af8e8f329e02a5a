"""The search: Ray Tune runs the trials that Optuna's TPE samples define-by-run, ASHA stops poor
trials early. The only module that imports Ray (its API moves between releases; pinned in
pyproject.toml).

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

import contextlib
import gc
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

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

import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from autotrick.cluster import check_address, native_stderr_hidden
from autotrick.data.size import DataSize
from autotrick.device import trials_at_once
from autotrick.errors import AutotrickError, ConfigError, first_line
from autotrick.params import Value
from autotrick.patience import Patience
from autotrick.records import Outcome, SearchResult, TrialRecord
from autotrick.search_options import SearchOptions
from autotrick.space import SearchSpace
from autotrick.state import JOURNAL_FILE
from autotrick.study import (
    BASELINE_KEY,
    OBJECTIVES,
    RECORD,
    TRIAL_KEY,
    DefineByRun,
    existing_trials,
    open_journal,
    records_from_study,
    requeue_interrupted,
    study_directions,
    tell,
)
from autotrick.system_metrics import PREFIX as SYSTEM_PREFIX
from autotrick.trainer import EpochReport, TrainConfig
from autotrick.warmstart import NO_WARM_START, WarmStart, enqueue_recipes, tell_earlier

# No per-trial result files are kept, so the ResultGrid that fit() builds cannot read metrics back
# and would warn about every trial; autotrick reads the outcome from the Optuna study instead.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

EPOCH_METRICS = tuple(k for k in EpochReport.__dataclass_fields__ if k != "outcome")
_PRELOAD_ENV = "AUTOTRICK_PRELOAD"   # "data|data_dir|skip_bad_images" for the worker setup hook
SEED_KEY = "autotrick.seed"       # a seeded re-run's own seed (confirmation, ablation)


def saved_model_path(state_dir: Path, number: int) -> Path:
    return state_dir / "models" / f"trial-{number:04d}.pt"


# --------------------------------------------------------------------------- inside a worker

def warm_worker() -> None:
    """Ray's worker_process_setup_hook: torch and the data set once per worker process, which
    reused actors keep for every trial they run (the peer glue pays ~6 s of start-up per trial).
    Ray runs it as the actor is created, after loading the trainable (which imports torch), so
    what it adds is the data set, loaded before the first trial's clock starts."""
    from autotrick import trainer  # noqa: F401  (imports torch and the tricks)
    from autotrick.data import load_data

    spec = os.environ.get(_PRELOAD_ENV)
    if spec:
        head, _, skip = spec.rpartition("|")
        data, _, data_dir = head.partition("|")
        # A data set that cannot be read (a corrupt image): raised here, it kills the worker with a
        # traceback; the trial loads it again and its reason names the file.
        with contextlib.suppress(AutotrickError):
            load_data(data, data_dir or None, skip_bad_images=skip == "1")


def run_one_trial(config: dict[str, Any], *, train: TrainConfig, metric: str, state_dir: str | None,
                  size: DataSize, objectives: tuple[str, ...] = ()) -> None:
    """The trainable: one trial in a (reused) Ray actor. Every outcome, a raised exception
    included, is reported as a result, so the driver records it with its reason. With several
    `objectives`, the trained model is measured for them (autotrick.objectives)."""
    from autotrick.system_metrics import SystemSampler
    from autotrick.trainer import run_trial

    values = _trick_values(config)
    if SEED_KEY in config:  # a seeded re-run (confirmation, ablation): its own seed, paired across recipes
        train = replace(train, seed=int(config[SEED_KEY]))
    worst = 0.0 if metric == "val_accuracy" else 1e9
    gpus = ray.get_gpu_ids() if train.device == "cuda" else []
    system = SystemSampler(int(gpus[0]) if gpus and str(gpus[0]).isdigit() else None)
    measured: dict[str, float] = {}  # the trained model's objectives (on_trained runs before the last report)

    def report(epoch: EpochReport) -> None:
        metrics = {**epoch.metrics(), **system.sample(), "outcome": epoch.outcome.value if epoch.outcome else "",
                   "reason": epoch.warning, STEP_LRS: [list(pair) for pair in epoch.step_lrs]}
        value = metrics[metric]
        if isinstance(value, float) and not math.isfinite(value):
            metrics[metric] = worst  # ASHA compares this number: a NaN would poison its rungs
        if epoch.outcome is not None:  # the last report, which ASHA may end the trial on: the objectives
            metrics.update({f"{_MEASURED}{key}": value for key, value in measured.items()})
        tune.report(metrics)

    save = partial(_save_model, saved_model_path(Path(state_dir), int(config[TRIAL_KEY])), train, size, values) \
        if state_dir else None
    if objectives:
        from autotrick.objectives import measure_trained

        save = partial(measure_trained, measured, objectives, train, then=save)
    try:
        result = run_trial(values, train, report, on_trained=save)
    except Exception as exc:  # recorded as a failed trial; the search goes on
        tune.report({metric: worst, "outcome": Outcome.FAILED.value, "reason": first_line(exc)[:500],
                     TRACEBACK: traceback.format_exc()[-_MAX_ERROR_CHARS:]})
        return
    finally:
        system.close()
    if result.reason or result.warning or result.measurements:
        # What the last epoch's report could not carry: the reason (and a damaged model's warning),
        # and what pruning measured.
        reason = "; ".join(r for r in (result.reason, result.warning) if r)
        tune.report({metric: result.val_accuracy if metric == "val_accuracy" else result.val_loss,
                     "outcome": result.outcome.value, "reason": reason, "epoch": result.epochs_run,
                     **{f"{_MEASURED}{key}": value for key, value in result.measurements.items()},
                     "final": 1})


_MEASURED = "measured."  # the prefix of a final report's measurements
STEP_LRS = "step_lrs"    # an epoch report's [optimizer step, lr] pairs
TRACEBACK = "traceback"   # a failed trial's traceback, for its MLflow run and -v
_MAX_ERROR_CHARS = 20_000


def _save_model(path: Path, train: TrainConfig, size: DataSize, values: dict[str, Value], model: Any) -> None:
    """The trained model as an autotrick checkpoint: checkpoint.load_checkpoint rebuilds it."""
    from autotrick.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, spec=train.model, tricks=values, num_classes=size.num_classes,
                    input_shape=(size.in_channels, *size.image_size))


# --------------------------------------------------------------------------- in the driver

class _ASHA(ASHAScheduler):
    """ASHA that never stops the baseline (it is the reference every search is measured against)
    and remembers which trials it stopped, so they are told apart from interrupted ones."""

    def __init__(self, *, max_t: int, **kwargs: Any) -> None:
        super().__init__(max_t=max_t, **kwargs)
        self.max_epochs = max_t
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("training_iteration", 0) < self.max_epochs:
            if trial.config.get(BASELINE_KEY) or result.get("outcome"):
                return TrialScheduler.CONTINUE
            self.stopped.add(trial.trial_id)
        return decision


def _outcome(result: dict[str, Any], *, error: bool, stopped_by_asha: bool) -> Outcome:
    if error:
        return Outcome.FAILED
    if result.get("outcome"):
        return Outcome.parse(str(result["outcome"]))
    return Outcome.ASHA_STOPPED if stopped_by_asha else Outcome.INTERRUPTED


class _TrickSearcher(Searcher):
    """Ray Tune's searcher over Optuna's ask-and-tell interface: Optuna's TPE samples each trial's
    tricks define-by-run, and every outcome is told back to Optuna (a NaN or a failure as FAIL, an
    ASHA stop as PRUNED: Ray's OptunaSearch leaves a NaN trial RUNNING). Each trial's record is
    kept in the study (a user attribute), which is what a resumed search reads back. Everything
    here goes through Optuna's and Ray's public interfaces."""

    def __init__(self, space: SearchSpace, *, study_name: str, storage: optuna.storages.BaseStorage,
                 seed: int, scheduler: _ASHA, objectives: tuple[str, ...] = (),
                 warm_start: WarmStart = NO_WARM_START) -> None:
        super().__init__(metric=space.budget.metric, mode=space.budget.mode)
        self._define = DefineByRun(space)
        self._scheduler = scheduler
        existing = existing_trials(storage, study_name)
        # A resumed study re-seeds the sampler past the trials it has, so it does not redraw them.
        sampler = optuna.samplers.TPESampler(seed=seed + existing, constant_liar=True, n_startup_trials=8)
        direction: Literal["maximize", "minimize"] = "maximize" if space.budget.mode == "max" else "minimize"
        # several objectives: TPE samples them too (its multi-objective form), study.tell takes each
        self.study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                         load_if_exists=True, **study_directions(objectives, direction))
        if objectives:
            self.study.set_user_attr(OBJECTIVES, list(objectives))
        self._trials: dict[str, optuna.Trial] = {}   # Ray's trial id -> the Optuna trial it runs
        self._configs: dict[str, dict[str, Any]] = {}  # every value drawn, fixed ones included
        self._history: dict[str, list[dict[str, float]]] = {}
        self._step_lrs: dict[str, list[list[float]]] = {}
        self.finished: dict[str, TrialRecord] = {}  # for the progress callback, which runs after
        self.write_error: OSError | None = None  # the journal could not be written: no more trials
        if existing == 0:
            self.study.enqueue_trial(self._define.baseline_params(), user_attrs={BASELINE_KEY: True})
            enqueue_recipes(self.study, space.domains, space.priors + warm_start.recipes)
            tell_earlier(self.study, space.domains, warm_start.searches, open_storage=open_journal)
        else:
            requeue_interrupted(self.study)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any],
                              **spec: Any) -> bool:
        return True  # the metric, the mode and the space were given to the constructor

    # Ray documents Searcher.FINISHED (a str) as an answer here; its type hint leaves it out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.write_error is not None:
            return Searcher.FINISHED
        try:
            trial = self.study.ask()  # an enqueued trial (the baseline, a re-queued one) comes first
        except OSError as error:
            self.write_error = error
            return Searcher.FINISHED
        config = self._define(trial)
        self._trials[trial_id], self._configs[trial_id] = trial, config
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._remember_epoch(trial_id, result)

    def _remember_epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        # Ray hands the result that made ASHA stop a trial to on_trial_complete only, and a
        # finished trial's last epoch may arrive both ways: keep each epoch once.
        if result.get("final") or "epoch" not in result:
            return  # the post-pruning summary is not a new epoch
        history = self._history.setdefault(trial_id, [])
        if not history or history[-1].get("epoch", 0) < result["epoch"]:
            history.append({k: float(v) for k, v in result.items() if isinstance(v, int | float)
                            and (k in EPOCH_METRICS or k.startswith(SYSTEM_PREFIX))})
            self._step_lrs.setdefault(trial_id, []).extend(result.get(STEP_LRS) or [])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        trial = self._trials.pop(trial_id, None)
        if trial is None:  # told twice
            return
        result = result or {}
        self._remember_epoch(trial_id, result)
        outcome = _outcome(result, error=error, stopped_by_asha=trial_id in self._scheduler.stopped)
        value = result.get(self.metric)
        config = self._configs.pop(trial_id, {})
        record = TrialRecord(
            number=trial.number, values=_trick_values(config), outcome=outcome,
            metric=float(value) if isinstance(value, int | float) and math.isfinite(value) and not outcome.failed
            else None,
            epochs=int(result.get("epoch", 0) or 0), history=self._history.pop(trial_id, []),
            reason=str(result.get("reason", "")), baseline=bool(config.get(BASELINE_KEY)),
            error=str(result.get(TRACEBACK, "")), step_lrs=self._step_lrs.pop(trial_id, []),
            measurements={key.removeprefix(_MEASURED): float(v) for key, v in result.items()
                          if key.startswith(_MEASURED)})
        try:
            trial.set_user_attr(RECORD, record.to_dict())  # the study is what a resumed search reads back
            tell(self.study, trial, record)
        except OSError as error:  # a full disk: raised to Tune, it would log a traceback and go on
            self.write_error = self.write_error or error  # said after the fit; a resume re-runs the trial
            return
        self.finished[trial_id] = record

    def save(self, checkpoint_path: str) -> None:
        """Nothing for Ray's experiment checkpoint: the state lives in the Optuna journal."""

    def restore(self, checkpoint_path: str) -> None:
        """See `save`: a resumed search reads the Optuna journal instead."""


def _trick_values(config: dict[str, Any]) -> dict[str, Value]:
    return {k: v for k, v in config.items() if k not in (TRIAL_KEY, BASELINE_KEY, SEED_KEY)}


class _Progress(tune.Callback):
    """Hands each ended trial's record (built by the searcher, which Ray tells first) on: one
    console line, one MLflow child run."""

    def __init__(self, searcher: _TrickSearcher, on_record: Callable[[TrialRecord], None]) -> None:
        self.searcher, self.on_record = searcher, on_record
        self.started: dict[str, float] = {}  # the trials running now
        self.most_at_once = 0

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles callbacks into its experiment state; the record sink (console, MLflow
        # writer thread) lives in this process only and is not part of that state.
        return {**self.__dict__, "on_record": None}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.started[trial.trial_id] = time.perf_counter()
        self.most_at_once = max(self.most_at_once, len(self.started))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._hand_on(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._hand_on(trial)

    def _hand_on(self, trial: Trial) -> None:
        record = self.searcher.finished.pop(trial.trial_id, None)
        started = self.started.pop(trial.trial_id, None)
        if record is None or record.outcome is Outcome.INTERRUPTED:
            return
        record.seconds = time.perf_counter() - started if started else 0.0
        if record.outcome is Outcome.FAILED and not record.reason:
            record.reason, record.error = _worker_error(trial)  # the worker died: Ray holds the error
        self.on_record(record)


def _worker_error(trial: Trial) -> tuple[str, str]:
    """Why a trial's worker failed (its process died, or Ray could not run it): one line, and
    Ray's whole report. The report is the error file Tune writes on the driver for the trial."""
    path = Path(trial.error_file) if trial.error_file else None
    text = path.read_text(errors="replace") if path is not None and path.is_file() else ""
    if not text:
        error = trial.get_pickled_error()
        text = str(error) if error else ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    if "Traceback (most recent call last)" in text:
        lines.reverse()  # a traceback ends with the exception
    reason = f"its worker failed: {lines[0]}" if lines else "its worker failed"
    return reason[:500], text[-_MAX_ERROR_CHARS:]


# Connecting to a cluster: one attempt to reach its GCS (of 10 s: RAY_py_gcs_connect_timeout_s
# above), not Ray's 20 attempts of 30 s. Read when ray.init connects; a user's own value wins.
_CONNECT_ENV = {"RAY_gcs_server_port_wait_time_s": "1"}



def _start_ray(options: SearchOptions) -> bool:
    """Start a local Ray, or connect to a cluster; returns whether we started it (to stop it)."""
    if ray.is_initialized():
        return False
    # A streamed data set is read by each trial's loader workers, never loaded whole.
    preload = "" if options.train.data_mode == "stream" else \
        f"{options.train.data}|{options.train.data_dir or ''}|{int(options.train.skip_bad_images)}"
    if options.address:
        for key, value in _CONNECT_ENV.items():
            os.environ.setdefault(key, value)
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    quiet = native_stderr_hidden() if options.address and not options.verbose else contextlib.nullcontext()
    try:
        with quiet:
            ray.init(address=options.address, num_cpus=None if options.address else options.num_cpus,
                     include_dashboard=False, log_to_driver=options.verbose,
                     logging_level=logging.INFO if options.verbose else logging.ERROR,
                     runtime_env={"worker_process_setup_hook": "autotrick.search.warm_worker",
                                  "env_vars": {_PRELOAD_ENV: preload}})
    except ConnectionError as error:
        if not options.address:
            raise
        auth = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                "; a cluster with token authentication needs its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        raise ConfigError(f"--address {options.address}: no Ray cluster answered there ({first_line(error)}); "
                          f"check it with `ray status` on the head{auth}, or drop --address to start a local Ray"
                          ) from None
    finally:
        if sigterm is not None:  # ray.init makes SIGTERM a bare sys.exit: keep the caller's handler
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _concurrency(options: SearchOptions) -> int:
    if options.concurrency:
        return options.concurrency
    resources = ray.cluster_resources()
    return trials_at_once(resources.get("CPU", 1), resources.get("GPU", 0), cpus_per_trial=options.cpus_per_trial,
                          gpus_per_trial=options.gpus_per_trial)


def run_search(options: SearchOptions, on_record: Callable[[TrialRecord], None],
               before_shutdown: Callable[[SearchResult], None] | None = None,
               on_started: Callable[[SearchOptions], None] | None = None) -> SearchResult:
    """Run (or resume) the search until the study holds `trials` finished trials.

    `on_started` gets the options once Ray is up and the trials' GPUs and device are settled
    (`auto` on a cluster is settled here), before any trial runs: the caller records what
    settled. `before_shutdown` gets the result while Ray is still up, so that the caller's last
    work (MLflow plots, the registry) overlaps Ray's shutdown instead of following it."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    budget = options.space.budget
    we_started_ray = _start_ray(options)
    timings["ray_start_s"] = time.perf_counter() - started
    try:
        options = _settle_gpus(options)
        _check_gpus(options)
        if on_started is not None:
            on_started(options)
        options.state_dir.mkdir(parents=True, exist_ok=True)
        storage = open_journal(options.state_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        scheduler = _ASHA(time_attr="training_iteration", max_t=budget.max_epochs,
                          grace_period=budget.grace_epochs, reduction_factor=4)
        searcher = _TrickSearcher(options.space, study_name=options.name, storage=storage,
                                  seed=options.train.seed, scheduler=scheduler, objectives=options.objectives,
                                  warm_start=options.warm_start)
        remaining = budget.trials - len(records_from_study(searcher.study))
        patience = _patience(options, records_from_study(searcher.study))
        if remaining > 0 and not (patience and patience.stopped):
            fit_started = time.perf_counter()
            at_once = _fit(options, searcher, scheduler, remaining, on_record, patience)
            timings["trials_s"] = time.perf_counter() - fit_started
            timings["trials_at_once"] = at_once
        records = records_from_study(searcher.study)
        timings.update(_trial_time(records, _concurrency(options), timings.get("trials_s", 0.0)))
        stopped = patience.reason() if patience and patience.stopped else ""
        result = SearchResult(info=options.info(), records=records, study=searcher.study, timings=timings,
                              interrupted=len(records) < budget.trials and not stopped, stop_reason=stopped)
        if before_shutdown is not None:
            before_shutdown(result)
    finally:
        if we_started_ray:
            shutdown_started = time.perf_counter()
            # Tune leaves ObjectRefs in reference cycles: freed by a garbage collection after the
            # shutdown (in whichever thread triggers it), they call into the stopped core worker,
            # which ends the process. Collect them while Ray is up.
            gc.collect()
            ray.shutdown()
            timings["ray_shutdown_s"] = time.perf_counter() - shutdown_started
    timings["total_s"] = time.perf_counter() - started
    return result


def _trial_time(records: list[TrialRecord], slots: int, wall: float) -> dict[str, float]:
    """Where the trial phase went: set-up in the trials (data, model, tricks), their epochs, and
    the share of the slots' time spent training (1.0: every slot trained all the time)."""
    setup = sum(r.history[0].get("setup_seconds", 0.0) for r in records if r.history)
    epochs = sum(row.get("seconds", 0.0) for r in records for row in r.history)
    busy = {"trial_setup_s": setup, "epochs_s": epochs}
    if wall > 0:
        busy["slot_busy_ratio"] = epochs / (wall * slots)
    return busy


def _settle_gpus(options: SearchOptions) -> SearchOptions:
    """auto on a cluster: one GPU per trial when it has a GPU, none otherwise (the device
    follows, in SearchOptions.with_gpus); options settled before are left as they are."""
    if options.settled:
        return options
    return options.with_gpus(1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)


def _check_gpus(options: SearchOptions) -> None:
    """Ray would keep a trial that asks for a GPU the cluster lacks pending forever."""
    if options.gpus_per_trial:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < options.gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {options.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs")


class _PatienceStopper(tune.Stopper):
    """Tune's side of --patience (autotrick.patience): stop the whole search once it says so."""

    def __init__(self, patience: Patience) -> None:
        self.patience = patience

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.patience.stopped


def _fit(options: SearchOptions, searcher: _TrickSearcher, scheduler: _ASHA, trials: int,
         on_record: Callable[[TrialRecord], None], patience: Patience | None = None) -> int:
    """Run the trials; returns the most that ran at once."""
    _tune_output(options.verbose)
    gpus = options.gpus_per_trial or 0.0
    train = replace(options.train, epochs=options.space.budget.max_epochs, threads=options.threads_per_trial)
    progress = _Progress(searcher, on_record if patience is None else partial(_both, patience.record, on_record))
    trainable = tune.with_parameters(run_one_trial, train=train, metric=options.space.budget.metric,
                                     state_dir=str(options.state_dir.resolve()) if options.save_models else None,
                                     size=options.data_size, objectives=options.objectives)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": gpus}),
        tune_config=tune.TuneConfig(
            metric=options.space.budget.metric, mode=options.space.budget.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=trials, max_concurrent_trials=_concurrency(options),
            reuse_actors=True, time_budget_s=options.time_budget_s),
        run_config=tune.RunConfig(
            name=f"session-{int(time.time())}", storage_path=str((options.state_dir / "ray").resolve()),
            verbose=2 if options.verbose else 0, log_to_file=False,
            stop=_PatienceStopper(patience) if patience else None,
            callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    _fit_keeping_sigint(tuner, options.state_dir)
    if (error := searcher.write_error) is not None:  # Optuna's own error names no file
        raise OSError(error.errno, error.strerror, str(options.state_dir / JOURNAL_FILE)) from error
    return progress.most_at_once


def _patience(options: SearchOptions, earlier: list[TrialRecord]) -> Patience | None:
    if not options.patience:
        return None
    return Patience.after(earlier, patience=options.patience, min_gain=options.min_gain,
                          mode=options.space.budget.mode, val_count=options.data_size.val_count)


def _both(first: Callable[[TrialRecord], None], second: Callable[[TrialRecord], None], record: TrialRecord) -> None:
    first(record)
    second(record)


def _tune_output(verbose: bool) -> None:
    # Ray's own progress tables only with --verbose: its legacy reporter at verbose=0 prints nothing.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    # A failed trial is one line of ours (its error goes to its MLflow run): Ray's tracebacks of it,
    # and its closing "Trials did not complete" list, only with --verbose.
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "1" if verbose else "0"
    # Neither, nor a failure to save Ray's experiment state (a full disk), which autotrick does not
    # resume from (its Optuna journal is what it resumes).
    for name in ("ray.tune.tune", "ray.tune.execution.experiment_state"):
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.CRITICAL)


def _fit_keeping_sigint(tuner: tune.Tuner, state_dir: Path) -> None:
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        tuner.fit()  # SIGINT (and SIGTERM, SIGHUP: autotrick.signals) stops it gracefully
    except OSError as error:  # Tune's own state, written under the search's folder, names no file
        if error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(state_dir)) from error
    finally:
        if sigint is not None:  # Tune leaves its SIGINT handler installed after a fit nobody interrupted
            signal.signal(signal.SIGINT, sigint)


# --------------------------------------------------------------------------- seeded re-runs

@dataclass(frozen=True)
class SeededRun:
    """Fixed trick values trained once with their own seed at the full epoch budget (confirmation,
    ablation): seed s is the same seed for every recipe, so the runs are paired."""

    values: dict[str, Value]
    seed: int


@contextlib.contextmanager
def ray_session(options: SearchOptions) -> Iterator[None]:
    """Ray up for several batches of seeded runs (a search's Ray is reused; else one is started
    here, and stopped at the end)."""
    we_started_ray = _start_ray(options)
    try:
        yield
    finally:
        if we_started_ray:
            gc.collect()  # see run_search
            ray.shutdown()


def run_seeded(options: SearchOptions, runs: list[SeededRun], on_record: Callable[[SeededRun, TrialRecord], None],
               *, time_budget_s: float | None = None) -> None:
    """Train `runs` as trials of the same Ray as the search, in reused warm workers, first come
    first served (no sampler, no ASHA). `on_record` gets each ended run's record in this process as
    it ends; a run cut off (the time budget, Ctrl-C) gets none, so a later call re-runs it only."""
    if not runs:
        return
    with ray_session(options):
        options = _settle_gpus(options)
        _check_gpus(options)
        budget = options.space.budget
        train = replace(options.train, epochs=budget.max_epochs, threads=options.threads_per_trial)
        configs = [{**run.values, TRIAL_KEY: index, SEED_KEY: run.seed} for index, run in enumerate(runs)]
        # Ray's grid holds the runs' indices; the trainable reads their values from the object store
        trainable = tune.with_parameters(_seeded_trial, configs=configs, train=train, metric=budget.metric,
                                         size=options.data_size)
        _tune_output(options.verbose)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial or 0.0}),
            param_space={RUN_KEY: tune.grid_search(list(range(len(runs))))},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=_concurrency(options),
                                        reuse_actors=True, time_budget_s=time_budget_s),
            run_config=tune.RunConfig(
                name=f"seeded-{int(time.time())}", storage_path=str((options.state_dir / "ray").resolve()),
                verbose=2 if options.verbose else 0, log_to_file=False,
                callbacks=[_SeededProgress(runs, budget.metric, on_record)],
                failure_config=tune.FailureConfig(max_failures=0)))
        _fit_keeping_sigint(tuner, options.state_dir)


RUN_KEY = "autotrick.run"


def _seeded_trial(config: dict[str, Any], *, configs: list[dict[str, Any]], train: TrainConfig, metric: str,
                  size: DataSize) -> None:
    run_one_trial(configs[int(config[RUN_KEY])], train=train, metric=metric, state_dir=None, size=size)


class _SeededProgress(tune.Callback):
    """Each seeded run's record, as its last report says it ended."""

    def __init__(self, runs: list[SeededRun], metric: str,
                 on_record: Callable[[SeededRun, TrialRecord], None]) -> None:
        self.runs, self.metric, self.on_record = runs, metric, on_record

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_record": None}  # see _Progress

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._hand_on(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._hand_on(trial, error=True)

    def _hand_on(self, trial: Trial, *, error: bool) -> None:
        result = trial.last_result or {}
        index = int(trial.config[RUN_KEY])
        if not error and not result.get("outcome"):
            return  # cut off before its last report: not a result
        outcome = Outcome.FAILED if error else Outcome.parse(str(result["outcome"]))
        value = result.get(self.metric)
        finite = isinstance(value, int | float) and math.isfinite(value)
        reason, traceback_text = _worker_error(trial) if error else (str(result.get("reason", "")), "")
        record = TrialRecord(number=index, values=self.runs[index].values, outcome=outcome,
                             metric=float(value) if finite and outcome is not Outcome.FAILED else None,  # type: ignore[arg-type]
                             epochs=int(result.get("epoch", 0) or 0), reason=reason, error=traceback_text)
        self.on_record(self.runs[index], record)


__all__ = ["SearchOptions", "SeededRun", "check_address", "ray_session", "run_search", "run_seeded"]
