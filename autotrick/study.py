"""A search's Optuna study, kept in a journal beside the search: its define-by-run space (the
baseline first), how each trial's ending is told to it, the TrialRecord each trial keeps there
(what a resumed search, the summary and MLflow read back), and the trials an earlier session left
cut off, re-queued once. Optuna's public API only
(ask-and-tell, user attributes, enqueue_trial); no Ray here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from autotrick.params import Fixed, Value, suggest_values
from autotrick.records import Outcome, TrialRecord
from autotrick.space import SearchSpace
from autotrick.state import JOURNAL_FILE
from autotrick.tricks import TRICKS, defaults
from autotrick.warmstart import warm_domains, warm_values

BASELINE_KEY = "autotrick.baseline"
TRIAL_KEY = "autotrick.trial"  # with BASELINE_KEY: the config keys of a trial that are not trick values
REQUEUED_FROM = "autotrick.requeued_from"
RECORD = "autotrick.record"  # a trial's TrialRecord, kept as a user attribute of the trial
OBJECTIVES = "autotrick.objectives"  # a multi-objective study's objective names, a user attribute of the study


class DefineByRun:
    """Optuna's define-by-run space: the baseline trial (enqueued first) draws the baseline's
    values where they lie inside the searched domains, and holds them fixed elsewhere."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.baseline = defaults()

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        is_baseline = bool(trial.user_attrs.get(BASELINE_KEY))
        domains = self.space.baseline_domains(self.baseline) if is_baseline else self.space.domains
        if (warm := warm_values(trial)) is not None:  # a prior or --warm-start recipe: its exact values
            domains = warm_domains(self.space.domains, warm)
        return {**suggest_values(TRICKS, domains, trial), TRIAL_KEY: trial.number, BASELINE_KEY: is_baseline}

    def baseline_params(self) -> dict[str, Value]:
        """The baseline's values that Optuna draws (those inside the searched domains)."""
        return {key: self.baseline[key] for key, domain in self.space.baseline_domains(self.baseline).items()
                if key in self.baseline and not isinstance(domain, Fixed)}


def open_journal(state_dir: Path) -> optuna.storages.JournalStorage:
    """The study's journal (made whole beforehand by autotrick.state.SearchFolder.repair_journal)."""
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(state_dir / JOURNAL_FILE)))


def existing_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many trials the study `study_name` holds (0: it does not exist yet)."""
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def study_directions(objectives: tuple[str, ...], direction: str) -> dict[str, Any]:
    """create_study's keyword for one objective (`direction`) or several (the names'), and the
    names kept in the study, where `tell` and a resumed search read them."""
    if not objectives:
        return {"direction": direction}
    from autotrick.objectives import DIRECTIONS

    return {"directions": ["maximize" if DIRECTIONS[name] == "max" else "minimize" for name in objectives]}


def tell(study: optuna.Study, trial: optuna.Trial | int, record: TrialRecord) -> None:
    """Tell Optuna how a trial ended: a success with its metric, an ASHA stop as PRUNED; diverged,
    oom, failed or interrupted as FAIL, never left RUNNING. A multi-objective study is told each
    objective's value; a trial missing one (its measurement failed) is FAIL."""
    names = study.user_attrs.get(OBJECTIVES) if len(study.directions) > 1 else None
    values = record.objective_values(names) if names and record.successful else None
    if names and record.successful:
        study.tell(trial, values, state=optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL)
    elif record.successful:
        study.tell(trial, record.metric, state=optuna.trial.TrialState.COMPLETE)
    elif record.outcome is Outcome.ASHA_STOPPED and record.metric is not None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _was_interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """Cut off: left RUNNING by a kill, or FAIL without a record of its own (told FAIL by an
    earlier resume) or with a record saying it was interrupted (Ctrl-C, a signal, the time budget)."""
    record = trial.user_attrs.get(RECORD)
    interrupted = record is None or Outcome.parse(record["outcome"]) is Outcome.INTERRUPTED
    return trial.state == optuna.trial.TrialState.RUNNING or (
        trial.state == optuna.trial.TrialState.FAIL and interrupted)


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials cut off by an earlier session: enqueue their parameters again, once, so the sampler's
    choice is not lost and nothing runs twice. A trial left RUNNING is told FAIL first (a finished
    trial cannot be changed, so the new trial names the old one), unless it holds its record: then
    it ended and only the telling was cut off (a kill, or a torn journal line set aside), and it is
    told now. Returns how many were re-queued."""
    trials = study.get_trials(deepcopy=False)
    requeued_already = {t.user_attrs.get(REQUEUED_FROM) for t in trials}
    count = 0
    for trial in trials:
        if not _was_interrupted(trial):
            continue
        record = trial.user_attrs.get(RECORD)
        if trial.state == optuna.trial.TrialState.RUNNING and record is not None:
            ended = TrialRecord.from_dict(record)
            if ended.outcome is not Outcome.INTERRUPTED:
                tell(study, trial.number, ended)
                continue
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        if trial.number in requeued_already:
            continue
        study.enqueue_trial(trial.params, user_attrs={REQUEUED_FROM: trial.number,
                                                      BASELINE_KEY: bool(trial.user_attrs.get(BASELINE_KEY))})
        count += 1
    return count


def records_from_study(study: optuna.Study) -> list[TrialRecord]:
    """Every trial the study holds (this session's and earlier ones'), interrupted ones left out."""
    records = [TrialRecord.from_dict(trial.user_attrs[RECORD]) for trial in study.get_trials(deepcopy=False)
               if RECORD in trial.user_attrs]
    return [r for r in records if r.outcome is not Outcome.INTERRUPTED]


def finished_records(state_dir: Path, study_name: str) -> list[TrialRecord]:
    """The trials the study holds now, earlier sessions' included: for a search stopped before
    run_search could say."""
    if not (state_dir / JOURNAL_FILE).is_file():
        return []
    try:
        return records_from_study(optuna.load_study(study_name=study_name, storage=open_journal(state_dir)))
    except KeyError:  # the study was not created yet
        return []
