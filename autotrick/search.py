"""The search: Ray Tune runs the trials that Optuna's TPE samples define-by-run, ASHA stops poor
trials early. The only module that imports Ray (its API moves between releases; pinned in
pyproject.toml).

What is added to the glue a user writes by hand, and why:
- warm workers: actors are reused between trials (`reuse_actors`) and each worker process imports
  torch and loads the data set once, in a setup hook, instead of once per trial;
- the Optuna study lives in a journal file beside the search, and every trial is told to it with
  its outcome (a NaN or a failure is FAIL, an ASHA stop is PRUNED: plain OptunaSearch leaves a NaN
  trial RUNNING), so an interrupted search resumes from it without losing or repeating trials;
- the first trial is the baseline (every trick off), so each search says what its tricks gained;
- an interrupted `fit()` returns normally: the trial count is checked, not trusted.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Ray reads these when it is imported and when workers start: no per-trial CSV/JSON/TensorBoard
# files (MLflow gets everything from tracking.py), no token-auth set-up for a local cluster.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from autotrick.params import Fixed, Value, suggest_values  # noqa: E402
from autotrick.records import SUCCESSFUL, TrialRecord, best_of, better  # noqa: E402
from autotrick.space import SearchSpace, baseline_values  # noqa: E402
from autotrick.trainer import EpochReport, TrainConfig  # noqa: E402
from autotrick.tricks import TRICKS  # noqa: E402

TRIAL_KEY = "autotrick.trial"        # config keys that are not trick values
BASELINE_KEY = "autotrick.baseline"
INTERRUPTED = "interrupted"          # a trial cut off by Ctrl-C, a kill or the time budget
_PRELOAD_ENV = "AUTOTRICK_PRELOAD"   # "data|data_dir" for the worker setup hook


@dataclass(frozen=True)
class SearchOptions:
    name: str
    space: SearchSpace
    train: TrainConfig                 # model, data, epochs (= max epochs), batch size, seed, device
    state_dir: Path                    # .autotrick/<name>: the Optuna journal, Ray's files, saved models
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int | None = None     # default: as many trials as the resources hold
    address: str | None = None         # an existing Ray cluster; None starts a local one
    num_cpus: int | None = None        # for a local Ray; None: every core
    time_budget_s: float | None = None
    resume: bool = False
    verbose: bool = False
    save_models: bool = False          # keep each trial's weights so the best can be registered


@dataclass
class SearchResult:
    records: list[TrialRecord]         # every trial of the search, earlier sessions included
    requested: int
    interrupted: bool
    study: optuna.Study
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> TrialRecord | None:
        return best_of(self.records, self.study.direction.name.lower()[:3].replace("min", "min"))

    @property
    def baseline(self) -> TrialRecord | None:
        return next((r for r in self.records if r.baseline and r.successful), None)

    def model_path(self, state_dir: Path, number: int) -> Path:
        return saved_model_path(state_dir, number)


def saved_model_path(state_dir: Path, number: int) -> Path:
    return state_dir / "models" / f"trial-{number:04d}.pt"


# --------------------------------------------------------------------------- inside a worker

def warm_worker() -> None:
    """Ray's worker_process_setup_hook: import torch and load the data set when a worker process
    starts, so that no trial pays for them (the peer glue pays ~6 s per trial)."""
    from autotrick import trainer  # noqa: F401  (imports torch, torchvision, the tricks)
    from autotrick.data import load_data

    spec = os.environ.get(_PRELOAD_ENV)
    if spec:
        data, _, data_dir = spec.partition("|")
        load_data(data, data_dir or None)


def run_one_trial(config: dict[str, Any], *, train: TrainConfig, metric: str, state_dir: str | None) -> None:
    """The trainable: one trial in a (reused) Ray actor. Every outcome, a raised exception
    included, is reported as a result, so the driver records it with its reason."""
    from autotrick.trainer import run_trial

    values = {k: v for k, v in config.items() if k not in (TRIAL_KEY, BASELINE_KEY)}
    worst = 0.0 if metric == "val_accuracy" else 1e9

    def report(epoch: EpochReport) -> None:
        metrics = {**epoch.metrics(), "outcome": epoch.outcome or ""}
        if not math.isfinite(metrics[metric]):
            metrics[metric] = worst  # ASHA compares this number: a NaN would poison its rungs
        tune.report(metrics)

    try:
        result = run_trial(values, train, report, keep_model=state_dir is not None)
    except Exception as exc:  # recorded as a failed trial; the search goes on
        tune.report({metric: worst, "outcome": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]})
        return
    if result.reason or result.sparsity is not None:
        tune.report({metric: result.val_accuracy if metric == "val_accuracy" else result.val_loss,
                     "outcome": result.outcome, "reason": result.reason, "sparsity": result.sparsity or 0.0,
                     "nonzero_params": result.nonzero_params or 0, "epoch": result.epochs_run,
                     "final": 1})
    if state_dir is not None and result.model is not None and result.outcome in SUCCESSFUL:
        import torch

        path = saved_model_path(Path(state_dir), int(config[TRIAL_KEY]))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.model.state_dict(), path)


# --------------------------------------------------------------------------- in the driver

class _DefineByRun:
    """Optuna's define-by-run space: the baseline trial (enqueued first) draws the baseline's
    values where they lie inside the searched domains, and holds them fixed elsewhere."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.baseline = baseline_values()

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        is_baseline = bool(trial.user_attrs.get(BASELINE_KEY))
        domains = self.space.baseline_domains(self.baseline) if is_baseline else self.space.domains
        return {**suggest_values(TRICKS, domains, trial), TRIAL_KEY: trial.number, BASELINE_KEY: is_baseline}

    def baseline_params(self) -> dict[str, Value]:
        """The baseline's values that Optuna draws (those inside the searched domains)."""
        return {key: self.baseline[key] for key, domain in self.space.baseline_domains(self.baseline).items()
                if key in self.baseline and not isinstance(domain, Fixed)}


class _ASHA(ASHAScheduler):
    """ASHA that never stops the baseline (it is the reference every search is measured against)
    and remembers which trials it stopped, so they are told apart from interrupted ones."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and result.get("training_iteration", 0) < self._max_t:
            if trial.config.get(BASELINE_KEY) or result.get("outcome"):
                return TrialScheduler.CONTINUE
            self.stopped_early.add(trial.trial_id)
        return decision


def _outcome(result: dict[str, Any] | None, *, error: bool, stopped_early: bool) -> str:
    if error:
        return "failed"
    if result and result.get("outcome"):
        return str(result["outcome"])
    return "stopped_early" if stopped_early else INTERRUPTED


class _TrickSearcher(OptunaSearch):
    """OptunaSearch over the define-by-run space that tells Optuna every outcome and keeps each
    trial's record in the study (user attributes), which is what resuming reads back."""

    def __init__(self, space: SearchSpace, *, study_name: str, storage: optuna.storages.BaseStorage,
                 seed: int, scheduler: _ASHA) -> None:
        self._define = _DefineByRun(space)
        self._scheduler = scheduler
        self._metric_name = space.budget.metric
        # A resumed study re-seeds the sampler past the trials it has, so it does not redraw them.
        existing = _existing_trials(storage, study_name)
        sampler = optuna.samplers.TPESampler(seed=seed + existing, constant_liar=True, n_startup_trials=8)
        super().__init__(space=self._define, metric=space.budget.metric, mode=space.budget.mode,
                         sampler=sampler, study_name=study_name, storage=storage)
        if existing == 0:
            self._ot_study.enqueue_trial(self._define.baseline_params(), user_attrs={BASELINE_KEY: True})
        else:
            requeue_interrupted(self._ot_study)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get("final"):
            return  # the post-pruning summary is not a new epoch
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        outcome = _outcome(result, error=error, stopped_early=trial_id in self._scheduler.stopped_early)
        value = (result or {}).get(self._metric_name)
        finite = isinstance(value, int | float) and math.isfinite(value)
        ot_trial.set_user_attr("outcome", outcome)
        ot_trial.set_user_attr("reason", str((result or {}).get("reason", "")))
        ot_trial.set_user_attr("epochs", int((result or {}).get("epoch", 0) or 0))
        ot_trial.set_user_attr("values", _trick_values(result.get("config", {}) if result else {}))
        if outcome in SUCCESSFUL and finite:
            self._ot_study.tell(ot_trial, value, state=optuna.trial.TrialState.COMPLETE)
        elif outcome == "stopped_early" and finite:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        else:  # diverged, oom, failed, interrupted: FAIL, never left RUNNING
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)


def _trick_values(config: dict[str, Any]) -> dict[str, Value]:
    return {k: v for k, v in config.items() if k not in (TRIAL_KEY, BASELINE_KEY)}


def _existing_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING (or told interrupted) by an earlier session: mark them FAIL once and
    enqueue their parameters again, so the sampler's choice is not lost and nothing runs twice."""
    storage = study._storage
    requeued = 0
    for trial in study.get_trials(deepcopy=False):
        cut_off = trial.state == optuna.trial.TrialState.RUNNING or (
            trial.user_attrs.get("outcome") == INTERRUPTED and not trial.user_attrs.get("requeued"))
        if not cut_off:
            continue
        if trial.state == optuna.trial.TrialState.RUNNING:
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            storage.set_trial_user_attr(trial._trial_id, "outcome", INTERRUPTED)
        storage.set_trial_user_attr(trial._trial_id, "requeued", True)
        study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items()
                                                      if k == BASELINE_KEY})
        requeued += 1
    return requeued


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    """Every trial the study knows (this session's and earlier ones'), interrupted ones left out."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        outcome = trial.user_attrs.get("outcome")
        if outcome is None or outcome == INTERRUPTED:
            continue
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else _last(trial)
        records.append(TrialRecord(number=trial.number, values=trial.user_attrs.get("values", trial.params),
                                   outcome=outcome, metric=value, epochs=trial.user_attrs.get("epochs", 0),
                                   reason=trial.user_attrs.get("reason", ""),
                                   baseline=bool(trial.user_attrs.get(BASELINE_KEY))))
    return records


def _last(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


class _Progress(tune.Callback):
    """Collects each trial's epochs; when a trial ends, builds its record and hands it on (one
    console line, one MLflow child run)."""

    def __init__(self, scheduler: _ASHA, metric: str, on_record: Callable[[TrialRecord], None]) -> None:
        self.scheduler, self.metric, self.on_record = scheduler, metric, on_record
        self.history: dict[str, list[dict[str, float]]] = defaultdict(list)
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if not result.get("final"):
            self.history[trial.trial_id].append(
                {k: float(result[k]) for k in EpochReport.__dataclass_fields__ if k in result and k != "outcome"})

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, error=True)

    def _finish(self, trial: Trial, *, error: bool) -> None:
        result = trial.last_result or {}
        outcome = _outcome(result, error=error, stopped_early=trial.trial_id in self.scheduler.stopped_early)
        if outcome == INTERRUPTED:
            return
        reason = str(result.get("reason", "")) or (_error_text(trial) if error else "")
        value = result.get(self.metric)
        metric = float(value) if outcome not in ("failed", "oom", "diverged") and value is not None else None
        self.on_record(TrialRecord(
            number=int(trial.config[TRIAL_KEY]), values=_trick_values(trial.config), outcome=outcome,
            metric=metric, epochs=int(result.get("epoch", 0) or 0), history=self.history.pop(trial.trial_id, []),
            reason=reason, baseline=bool(trial.config.get(BASELINE_KEY)),
            seconds=time.perf_counter() - self.started.pop(trial.trial_id, time.perf_counter())))


def _error_text(trial: Trial) -> str:
    error = trial.get_pickled_error() if hasattr(trial, "get_pickled_error") else None
    text = str(error) if error else "the trial's worker failed"
    return " ".join(text.split())[:500]


def _start_ray(options: SearchOptions) -> bool:
    """Start a local Ray, or connect to a cluster; returns whether we started it (to stop it)."""
    if ray.is_initialized():
        return False
    preload = f"{options.train.data}|{options.train.data_dir or ''}"
    ray.init(address=options.address, num_cpus=None if options.address else options.num_cpus,
             include_dashboard=False, log_to_driver=options.verbose,
             logging_level="INFO" if options.verbose else "ERROR",
             runtime_env={"worker_process_setup_hook": "autotrick.search.warm_worker",
                          "env_vars": {_PRELOAD_ENV: preload}})
    return True


def _concurrency(options: SearchOptions) -> int:
    if options.concurrency:
        return options.concurrency
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1) // max(options.cpus_per_trial, 1e-9))
    if options.gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // options.gpus_per_trial))
    return max(1, slots)


def run_search(options: SearchOptions, on_record: Callable[[TrialRecord], None]) -> SearchResult:
    """Run (or resume) the search until the study holds `trials` finished trials."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    budget = options.space.budget
    options.state_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(options.state_dir / "optuna.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    we_started_ray = _start_ray(options)
    timings["ray_start_s"] = time.perf_counter() - started
    try:
        scheduler = _ASHA(time_attr="training_iteration", max_t=budget.max_epochs,
                          grace_period=budget.grace_epochs, reduction_factor=3)
        searcher = _TrickSearcher(options.space, study_name=options.name, storage=storage,
                                  seed=options.train.seed, scheduler=scheduler)
        study = searcher._ot_study
        remaining = budget.trials - len(records_from_study(study))
        if remaining > 0:
            fit_started = time.perf_counter()
            _fit(options, searcher, scheduler, remaining, on_record)
            timings["trials_s"] = time.perf_counter() - fit_started
    finally:
        if we_started_ray:
            shutdown_started = time.perf_counter()
            ray.shutdown()
            timings["ray_shutdown_s"] = time.perf_counter() - shutdown_started
    records = records_from_study(study)
    timings["total_s"] = time.perf_counter() - started
    return SearchResult(records=records, requested=budget.trials, interrupted=len(records) < budget.trials,
                        study=study, timings=timings)


def _fit(options: SearchOptions, searcher: _TrickSearcher, scheduler: _ASHA, trials: int,
         on_record: Callable[[TrialRecord], None]) -> None:
    # Ray's own progress tables only with --verbose: its legacy reporter at verbose=0 prints nothing.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if options.verbose else "0"
    train = replace(options.train, epochs=options.space.budget.max_epochs,
                    threads=max(1, int(options.cpus_per_trial)),
                    device="cuda" if options.gpus_per_trial > 0 else options.train.device)
    trainable = tune.with_parameters(run_one_trial, train=train, metric=options.space.budget.metric,
                                     state_dir=str(options.state_dir) if options.save_models else None)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}),
        tune_config=tune.TuneConfig(
            metric=options.space.budget.metric, mode=options.space.budget.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=trials, max_concurrent_trials=_concurrency(options),
            reuse_actors=True, time_budget_s=options.time_budget_s),
        run_config=tune.RunConfig(
            name=f"session-{int(time.time())}", storage_path=str((options.state_dir / "ray").resolve()),
            verbose=2 if options.verbose else 0, log_to_file=False,
            callbacks=[_Progress(scheduler, options.space.budget.metric, on_record)],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()


__all__ = ["SearchOptions", "SearchResult", "better", "records_from_study", "run_search"]
