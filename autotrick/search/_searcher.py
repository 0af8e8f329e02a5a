"""In the driver: Optuna's sampling under Ray Tune (the searcher), ASHA that spares the baseline, and the
callback that hands each ended trial's record on."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from autotrick.records import Outcome, TrialRecord
from autotrick.search import _nodes as nodes
from autotrick.search._trial import EPOCH_METRICS, MAX_ERROR_CHARS, MEASURED, STEP_LRS, TRACEBACK, trick_values
from autotrick.space import SearchSpace
from autotrick.study import (
    BASELINE_KEY,
    OBJECTIVES,
    RECORD,
    DefineByRun,
    existing_trials,
    open_journal,
    requeue_interrupted,
    study_directions,
    tell,
)
from autotrick.system_metrics import PREFIX as SYSTEM_PREFIX
from autotrick.warmstart import NO_WARM_START, WarmStart, enqueue_recipes, tell_earlier


class ASHA(ASHAScheduler):
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


class TrickSearcher(Searcher):
    """Ray Tune's searcher over Optuna's ask-and-tell interface: Optuna's TPE samples each trial's
    tricks define-by-run, and every outcome is told back to Optuna (a NaN or a failure as FAIL, an
    ASHA stop as PRUNED: Ray's OptunaSearch leaves a NaN trial RUNNING). Each trial's record is
    kept in the study (a user attribute), which is what a resumed search reads back. Everything
    here goes through Optuna's and Ray's public interfaces."""

    def __init__(self, space: SearchSpace, *, study_name: str, storage: optuna.storages.BaseStorage,
                 seed: int, scheduler: ASHA, objectives: tuple[str, ...] = (),
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
            number=trial.number, values=trick_values(config), outcome=outcome,
            metric=float(value) if isinstance(value, int | float) and math.isfinite(value) and not outcome.failed
            else None,
            epochs=int(result.get("epoch", 0) or 0), history=self._history.pop(trial_id, []),
            reason=str(result.get("reason", "")), baseline=bool(config.get(BASELINE_KEY)),
            error=str(result.get(TRACEBACK, "")), step_lrs=self._step_lrs.pop(trial_id, []),
            measurements={key.removeprefix(MEASURED): float(v) for key, v in result.items()
                          if key.startswith(MEASURED)})
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



class Progress(tune.Callback):
    """Hands each ended trial's record (built by the searcher, which Ray tells first) on: one
    console line, one MLflow child run."""

    def __init__(self, searcher: TrickSearcher, on_record: Callable[[TrialRecord], None]) -> None:
        self.searcher, self.on_record = searcher, on_record
        self.started: dict[str, float] = {}  # the trials running now
        self.nodes_at_start = nodes.alive_node_ids()  # to tell a node lost during the search
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
            record.reason, record.error = worker_error(trial)  # the worker died: Ray holds the error
            record.reason = nodes.with_node(record.reason, trial.node_ip, self.nodes_at_start)
        self.on_record(record)


def worker_error(trial: Trial) -> tuple[str, str]:
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
    return reason[:500], text[-MAX_ERROR_CHARS:]


# Connecting to a cluster: one attempt to reach its GCS (of 10 s: RAY_py_gcs_connect_timeout_s
