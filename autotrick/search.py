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

import gc
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

# Ray reads these when it is imported and when workers start: no per-trial CSV/JSON/TensorBoard
# files (MLflow gets everything from tracking.py), no token-auth set-up for a local cluster.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# autotrick resumes from its Optuna study, not from Ray's experiment state: snapshot it rarely.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "300")

import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from autotrick.errors import ConfigError
from autotrick.params import Fixed, Value, suggest_values
from autotrick.records import SUCCESSFUL, TrialRecord, best_of, better
from autotrick.space import SearchSpace, baseline_values
from autotrick.trainer import EpochReport, TrainConfig
from autotrick.tricks import TRICKS

# No per-trial result files are kept, so the ResultGrid that fit() builds cannot read metrics back
# and would warn about every trial; autotrick reads the outcome from the Optuna study instead.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

TRIAL_KEY = "autotrick.trial"        # config keys that are not trick values
BASELINE_KEY = "autotrick.baseline"
INTERRUPTED = "interrupted"          # a trial cut off by Ctrl-C, a kill or the time budget
REQUEUED_FROM = "autotrick.requeued_from"
RECORD = "autotrick.record"          # a trial's TrialRecord, kept as a user attribute of the trial
FAILED = ("diverged", "oom", "failed")
EPOCH_METRICS = tuple(k for k in EpochReport.__dataclass_fields__ if k != "outcome")
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

    @property
    def threads_per_trial(self) -> int:
        """torch's CPU threads in each trial: its whole CPUs."""
        return max(1, int(self.cpus_per_trial))


@dataclass
class SearchResult:
    records: list[TrialRecord]         # every trial of the search, earlier sessions included
    requested: int
    mode: str                          # "max" or "min"
    interrupted: bool
    study: optuna.Study
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> TrialRecord | None:
        return best_of(self.records, self.mode)

    @property
    def baseline(self) -> TrialRecord | None:
        return next((r for r in self.records if r.baseline and r.successful), None)


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
        data, _, data_dir = spec.partition("|")
        load_data(data, data_dir or None)


def run_one_trial(config: dict[str, Any], *, train: TrainConfig, metric: str, state_dir: str | None) -> None:
    """The trainable: one trial in a (reused) Ray actor. Every outcome, a raised exception
    included, is reported as a result, so the driver records it with its reason."""
    from autotrick.trainer import run_trial

    values = {k: v for k, v in config.items() if k not in (TRIAL_KEY, BASELINE_KEY)}
    worst = 0.0 if metric == "val_accuracy" else 1e9

    def report(epoch: EpochReport) -> None:
        metrics = {**epoch.metrics(), "outcome": epoch.outcome or "", "reason": epoch.warning}
        if not math.isfinite(metrics[metric]):
            metrics[metric] = worst  # ASHA compares this number: a NaN would poison its rungs
        tune.report(metrics)

    save = partial(_save_model, saved_model_path(Path(state_dir), int(config[TRIAL_KEY]))) if state_dir else None
    try:
        result = run_trial(values, train, report, on_trained=save)
    except Exception as exc:  # recorded as a failed trial; the search goes on
        tune.report({metric: worst, "outcome": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]})
        return
    if result.reason or result.sparsity is not None:
        reason = "; ".join(r for r in (result.reason, result.warning) if r)
        tune.report({metric: result.val_accuracy if metric == "val_accuracy" else result.val_loss,
                     "outcome": result.outcome, "reason": reason, "sparsity": result.sparsity or 0.0,
                     "nonzero_params": result.nonzero_params or 0, "epoch": result.epochs_run,
                     "final": 1})


def _save_model(path: Path, model: Any) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


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
        self._configs: dict[str, dict[str, Any]] = {}  # every value drawn, fixed ones included
        self._history: dict[str, list[dict[str, float]]] = {}
        self.finished: dict[str, TrialRecord] = {}  # for the progress callback, which runs after
        if existing == 0:
            self._ot_study.enqueue_trial(self._define.baseline_params(), user_attrs={BASELINE_KEY: True})
        else:
            requeue_interrupted(self._ot_study)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if config is not None:
            self._configs[trial_id] = config
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._remember_epoch(trial_id, result)
        if not result.get("final"):
            super().on_trial_result(trial_id, result)

    def _remember_epoch(self, trial_id: str, result: dict[str, Any]) -> None:
        # Ray hands the result that made ASHA stop a trial to on_trial_complete only, and a
        # finished trial's last epoch may arrive both ways: keep each epoch once.
        if result.get("final") or "epoch" not in result:
            return  # the post-pruning summary is not a new epoch
        history = self._history.setdefault(trial_id, [])
        if not history or history[-1].get("epoch", 0) < result["epoch"]:
            history.append({k: float(result[k]) for k in EPOCH_METRICS if isinstance(result.get(k), int | float)})

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        self._remember_epoch(trial_id, result)
        outcome = _outcome(result, error=error, stopped_early=trial_id in self._scheduler.stopped_early)
        value = result.get(self._metric_name)
        finite = isinstance(value, int | float) and math.isfinite(value)
        config = self._configs.pop(trial_id, {})
        record = TrialRecord(
            number=ot_trial.number, values=_trick_values(config), outcome=outcome,
            metric=float(value) if finite and outcome not in FAILED else None,
            epochs=int(result.get("epoch", 0) or 0), history=self._history.pop(trial_id, []),
            reason=str(result.get("reason", "")), baseline=bool(config.get(BASELINE_KEY)))
        ot_trial.set_user_attr(RECORD, asdict(record))  # the study is what a resumed search reads back
        if outcome in SUCCESSFUL and finite:
            self._ot_study.tell(ot_trial, value, state=optuna.trial.TrialState.COMPLETE)
        elif outcome == "stopped_early" and finite:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        else:  # diverged, oom, failed, interrupted: FAIL, never left RUNNING
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)
        self.finished[trial_id] = record


def _trick_values(config: dict[str, Any]) -> dict[str, Value]:
    return {k: v for k, v in config.items() if k not in (TRIAL_KEY, BASELINE_KEY)}


def _existing_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials cut off by an earlier session (left RUNNING by a kill, or told interrupted after a
    Ctrl-C): enqueue their parameters again, once, so the sampler's choice is not lost and
    nothing runs twice. A finished trial cannot be changed, so the new trial names the old one."""
    trials = study.get_trials(deepcopy=False)
    requeued_already = {t.user_attrs.get(REQUEUED_FROM) for t in trials}
    count = 0
    for trial in trials:
        left_running = trial.state == optuna.trial.TrialState.RUNNING
        if not (left_running or trial.user_attrs.get("outcome") == INTERRUPTED):
            continue
        if left_running:
            study._storage.set_trial_user_attr(trial._trial_id, "outcome", INTERRUPTED)
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        if trial.number in requeued_already:
            continue
        study.enqueue_trial(trial.params, user_attrs={REQUEUED_FROM: trial.number,
                                                      BASELINE_KEY: bool(trial.user_attrs.get(BASELINE_KEY))})
        count += 1
    return count


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    """Every trial the study holds (this session's and earlier ones'), interrupted ones left out."""
    records = [TrialRecord(**trial.user_attrs[RECORD]) for trial in study.get_trials(deepcopy=False)
               if RECORD in trial.user_attrs]
    return [r for r in records if r.outcome != INTERRUPTED]


class _Progress(tune.Callback):
    """Hands each ended trial's record (built by the searcher, which Ray tells first) on: one
    console line, one MLflow child run."""

    def __init__(self, searcher: _TrickSearcher, on_record: Callable[[TrialRecord], None]) -> None:
        self.searcher, self.on_record = searcher, on_record
        self.started: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles callbacks into its experiment state; the record sink (console, MLflow
        # writer thread) lives in this process only and is not part of that state.
        return {**self.__dict__, "on_record": None}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._hand_on(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._hand_on(trial)

    def _hand_on(self, trial: Trial) -> None:
        record = self.searcher.finished.pop(trial.trial_id, None)
        started = self.started.pop(trial.trial_id, None)
        if record is None or record.outcome == INTERRUPTED:
            return
        record.seconds = time.perf_counter() - started if started else 0.0
        if record.outcome == "failed" and not record.reason:
            record.reason = _error_text(trial)  # the worker died: Ray holds the error
        self.on_record(record)


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


def run_search(options: SearchOptions, on_record: Callable[[TrialRecord], None],
               before_shutdown: Callable[[SearchResult], None] | None = None) -> SearchResult:
    """Run (or resume) the search until the study holds `trials` finished trials.

    `before_shutdown` gets the result while Ray is still up, so that the caller's last work
    (MLflow plots, the registry) overlaps Ray's shutdown instead of following it."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    budget = options.space.budget
    we_started_ray = _start_ray(options)
    timings["ray_start_s"] = time.perf_counter() - started
    try:
        _check_gpus(options)
        options.state_dir.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(options.state_dir / "optuna.journal")))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        scheduler = _ASHA(time_attr="training_iteration", max_t=budget.max_epochs,
                          grace_period=budget.grace_epochs, reduction_factor=4)
        searcher = _TrickSearcher(options.space, study_name=options.name, storage=storage,
                                  seed=options.train.seed, scheduler=scheduler)
        remaining = budget.trials - len(records_from_study(searcher._ot_study))
        if remaining > 0:
            fit_started = time.perf_counter()
            _fit(options, searcher, scheduler, remaining, on_record)
            timings["trials_s"] = time.perf_counter() - fit_started
        records = records_from_study(searcher._ot_study)
        timings.update(_trial_time(records, _concurrency(options), timings.get("trials_s", 0.0)))
        result = SearchResult(records=records, requested=budget.trials, mode=budget.mode,
                              interrupted=len(records) < budget.trials, study=searcher._ot_study, timings=timings)
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


def _check_gpus(options: SearchOptions) -> None:
    """Ray would keep a trial that asks for a GPU the cluster lacks pending forever."""
    if options.gpus_per_trial > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < options.gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {options.gpus_per_trial:g}: the Ray cluster has {gpus:g} GPUs")


def _fit(options: SearchOptions, searcher: _TrickSearcher, scheduler: _ASHA, trials: int,
         on_record: Callable[[TrialRecord], None]) -> None:
    # Ray's own progress tables only with --verbose: its legacy reporter at verbose=0 prints nothing.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if options.verbose else "0"
    train = replace(options.train, epochs=options.space.budget.max_epochs,
                    threads=options.threads_per_trial,
                    device="cuda" if options.gpus_per_trial > 0 else options.train.device)
    trainable = tune.with_parameters(run_one_trial, train=train, metric=options.space.budget.metric,
                                     state_dir=str(options.state_dir.resolve()) if options.save_models else None)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}),
        tune_config=tune.TuneConfig(
            metric=options.space.budget.metric, mode=options.space.budget.mode, search_alg=searcher,
            scheduler=scheduler, num_samples=trials, max_concurrent_trials=_concurrency(options),
            reuse_actors=True, time_budget_s=options.time_budget_s),
        run_config=tune.RunConfig(
            name=f"session-{int(time.time())}", storage_path=str((options.state_dir / "ray").resolve()),
            verbose=2 if options.verbose else 0, log_to_file=False,
            callbacks=[_Progress(searcher, on_record)],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    tuner.fit()


__all__ = ["SearchOptions", "SearchResult", "better", "records_from_study", "run_search"]
