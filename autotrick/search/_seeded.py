"""Fixed recipes re-trained over seeds on the search's Ray (confirmation and ablation): no sampler, no ASHA."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from autotrick.data.size import DataSize
from autotrick.params import Value
from autotrick.records import Outcome, TrialRecord
from autotrick.search._run import (
    check_gpus,
    cluster_parameters,
    concurrency,
    fit_keeping_sigint,
    settle_gpus,
    start_ray,
    tune_output,
)
from autotrick.search._searcher import worker_error
from autotrick.search._trial import SEED_KEY, run_one_trial
from autotrick.search_options import SearchOptions
from autotrick.study import (
    TRIAL_KEY,
)
from autotrick.trainer import TrainConfig


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
    we_started_ray = start_ray(options)
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
        options = settle_gpus(options)
        check_gpus(options)
        budget = options.space.budget
        train = replace(options.train, epochs=budget.max_epochs, threads=options.threads_per_trial)
        configs = [{**run.values, TRIAL_KEY: index, SEED_KEY: run.seed} for index, run in enumerate(runs)]
        # Ray's grid holds the runs' indices; the trainable reads their values from the object store
        trainable = tune.with_parameters(_seeded_trial, configs=configs, train=train, metric=budget.metric,
                                         size=options.data_size, **cluster_parameters(options, save_models=False))
        tune_output(options.verbose)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial or 0.0}),
            param_space={RUN_KEY: tune.grid_search(list(range(len(runs))))},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency(options),
                                        reuse_actors=True, time_budget_s=time_budget_s),
            run_config=tune.RunConfig(
                name=f"seeded-{int(time.time())}", storage_path=str((options.state_dir / "ray").resolve()),
                verbose=2 if options.verbose else 0, log_to_file=False,
                callbacks=[_SeededProgress(runs, budget.metric, on_record)],
                failure_config=tune.FailureConfig(max_failures=0)))
        fit_keeping_sigint(tuner, options.state_dir)


RUN_KEY = "autotrick.run"


def _seeded_trial(config: dict[str, Any], *, configs: list[dict[str, Any]], train: TrainConfig, metric: str,
                  size: DataSize, files: dict[str, bytes] | None = None) -> None:
    run_one_trial(configs[int(config[RUN_KEY])], train=train, metric=metric, state_dir=None, size=size, files=files)


class _SeededProgress(tune.Callback):
    """Each seeded run's record, as its last report says it ended."""

    def __init__(self, runs: list[SeededRun], metric: str,
                 on_record: Callable[[SeededRun, TrialRecord], None]) -> None:
        self.runs, self.metric, self.on_record = runs, metric, on_record

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_record": None}  # see Progress

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
        reason, traceback_text = worker_error(trial) if error else (str(result.get("reason", "")), "")
        record = TrialRecord(number=index, values=self.runs[index].values, outcome=outcome,
                             metric=float(value) if finite and outcome is not Outcome.FAILED else None,  # type: ignore[arg-type]
                             epochs=int(result.get("epoch", 0) or 0), reason=reason, error=traceback_text)
        self.on_record(self.runs[index], record)
