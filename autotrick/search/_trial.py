"""Inside a Ray worker: the warm-up hook and the trainable that runs one trial and reports each epoch."""

from __future__ import annotations

import contextlib
import math
import os
import traceback
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray import tune

from autotrick.data.size import DataSize
from autotrick.errors import AutotrickError, first_line
from autotrick.params import Value
from autotrick.records import Outcome
from autotrick.search import _nodes as nodes
from autotrick.shipping import localized
from autotrick.study import (
    BASELINE_KEY,
    TRIAL_KEY,
)
from autotrick.trainer import EpochReport, TrainConfig

EPOCH_METRICS = tuple(k for k in EpochReport.__dataclass_fields__ if k != "outcome")
PRELOAD_ENV = "AUTOTRICK_PRELOAD"   # "data|data_dir|skip_bad_images" for the worker setup hook
SEED_KEY = "autotrick.seed"       # a seeded re-run's own seed (confirmation, ablation)


def saved_model_path(state_dir: Path, number: int) -> Path:
    return state_dir / "models" / f"trial-{number:04d}.pt"



def warm_worker() -> None:
    """Ray's worker_process_setup_hook: torch and the data set once per worker process, which
    reused actors keep for every trial they run (the peer glue pays ~6 s of start-up per trial).
    Ray runs it as the actor is created, after loading the trainable (which imports torch), so
    what it adds is the data set, loaded before the first trial's clock starts."""
    from autotrick import trainer  # noqa: F401  (imports torch and the tricks)
    from autotrick.data import load_data

    spec = os.environ.get(PRELOAD_ENV)
    if spec:
        head, _, skip = spec.rpartition("|")
        data, _, data_dir = head.partition("|")
        # A data set that cannot be read (a corrupt image): raised here, it kills the worker with a
        # traceback; the trial loads it again and its reason names the file.
        with contextlib.suppress(AutotrickError):
            load_data(data, data_dir or None, skip_bad_images=skip == "1")


def run_one_trial(config: dict[str, Any], *, train: TrainConfig, metric: str, state_dir: str | None,
                  size: DataSize, objectives: tuple[str, ...] = (), models: Any = None,
                  files: dict[str, bytes] | None = None) -> None:
    """The trainable: one trial in a (reused) Ray actor. Every outcome, a raised exception
    included, is reported as a result, so the driver records it with its reason. With several
    `objectives`, the trained model is measured for them (autotrick.objectives). On a cluster:
    `models` and `files`, nodes.trial_parameters."""
    from autotrick.system_metrics import SystemSampler
    from autotrick.trainer import run_trial

    values = trick_values(config)
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
            metrics.update({f"{MEASURED}{key}": value for key, value in measured.items()})
        tune.report(metrics)

    save = partial(nodes.save_model, saved_model_path(Path(state_dir), int(config[TRIAL_KEY])), train, size, values,
                   models) if state_dir else None
    if objectives:
        from autotrick.objectives import measure_trained

        save = partial(measure_trained, measured, objectives, train, then=save)
    try:
        result = run_trial(values, localized(train, files or {}), report, on_trained=save)
    except Exception as exc:  # recorded as a failed trial; the search goes on
        tune.report({metric: worst, "outcome": Outcome.FAILED.value, "reason": first_line(exc)[:500],
                     TRACEBACK: traceback.format_exc()[-MAX_ERROR_CHARS:]})
        return
    finally:
        system.close()
    if result.reason or result.warning or result.measurements:
        # What the last epoch's report could not carry: the reason (and a damaged model's warning),
        # and what pruning measured.
        reason = "; ".join(r for r in (result.reason, result.warning) if r)
        tune.report({metric: result.val_accuracy if metric == "val_accuracy" else result.val_loss,
                     "outcome": result.outcome.value, "reason": reason, "epoch": result.epochs_run,
                     **{f"{MEASURED}{key}": value for key, value in result.measurements.items()},
                     "final": 1})


MEASURED = "measured."  # the prefix of a final report's measurements
STEP_LRS = "step_lrs"    # an epoch report's [optimizer step, lr] pairs
TRACEBACK = "traceback"   # a failed trial's traceback, for its MLflow run and -v
MAX_ERROR_CHARS = 20_000


def trick_values(config: dict[str, Any]) -> dict[str, Value]:
    return {k: v for k, v in config.items() if k not in (TRIAL_KEY, BASELINE_KEY, SEED_KEY)}
