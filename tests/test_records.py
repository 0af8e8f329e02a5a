"""The plain data every layer shares (records.py), and how a resumed search finds the trials an
earlier session left cut off (search.requeue_interrupted), on a real Optuna journal."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord
from autotrick.study import RECORD, REQUEUED_FROM, records_from_study, requeue_interrupted


def test_each_outcome_knows_whether_it_succeeded_failed_and_its_mlflow_status() -> None:
    assert {o for o in Outcome if o.successful} == {Outcome.FINISHED, Outcome.PATIENCE_STOPPED}
    assert {o for o in Outcome if o.failed} == {Outcome.DIVERGED, Outcome.OOM, Outcome.FAILED}
    assert Outcome.ASHA_STOPPED.mlflow_status == "FINISHED" and Outcome.OOM.mlflow_status == "FAILED"
    assert Outcome.INTERRUPTED.mlflow_status == "KILLED"
    assert f"{Outcome.ASHA_STOPPED}" == "asha_stopped"  # stored and printed as its word


def test_records_written_before_the_rename_still_read() -> None:
    old = {"number": 3, "values": {"norm.type": "group"}, "outcome": "stopped_early", "metric": 0.5, "epochs": 2,
           "history": [], "reason": "", "baseline": False, "seconds": 1.0}  # no measurements field yet
    record = TrialRecord.from_dict(old)
    assert record.outcome is Outcome.ASHA_STOPPED and record.measurements == {}
    assert Outcome.parse("early_stopped") is Outcome.PATIENCE_STOPPED
    assert TrialRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError):
        Outcome.parse("exploded")


def test_the_result_names_best_baseline_and_gain() -> None:
    info = SearchInfo(name="s", space="quick", model="cnn", data="digits", metric="val_loss", mode="min",
                      trials=3, max_epochs=4, batch_size=64, seed=0, device="cpu")
    records = [TrialRecord(0, {}, Outcome.FINISHED, 0.40, 4, baseline=True),
               TrialRecord(1, {}, Outcome.FINISHED, 0.30, 4),
               TrialRecord(2, {}, Outcome.DIVERGED, None, 1)]
    result = SearchResult(info=info, records=records, interrupted=False)
    assert result.best is records[1] and result.baseline is records[0]
    assert result.gain == pytest.approx(0.10)  # lower loss is better: the gain is positive
    assert result.complete and result.count(Outcome.DIVERGED) == 1
    assert not SearchResult(info=info, records=records[:2], interrupted=True).complete


def record(number: int, outcome: Outcome) -> dict[str, object]:
    return TrialRecord(number, {"x": 0.1}, outcome, None, 1).to_dict()


def test_requeue_finds_trials_cut_off_by_a_kill_or_by_ctrl_c_once(tmp_path: Path) -> None:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    finished, ctrl_c, killed, diverged = (study.ask(space) for _ in range(4))
    finished.set_user_attr(RECORD, record(0, Outcome.FINISHED))
    study.tell(finished, 0.5)
    ctrl_c.set_user_attr(RECORD, record(1, Outcome.INTERRUPTED))  # what a Ctrl-C'd session tells
    study.tell(ctrl_c, state=optuna.trial.TrialState.FAIL)
    diverged.set_user_attr(RECORD, record(3, Outcome.DIVERGED))
    study.tell(diverged, state=optuna.trial.TrialState.FAIL)
    # `killed` stays RUNNING: the process died before telling anything.

    again = optuna.load_study(study_name="s", storage=storage)  # as a resumed session opens it
    assert requeue_interrupted(again) == 2
    trials = again.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert sorted(t.user_attrs[REQUEUED_FROM] for t in waiting) == [ctrl_c.number, killed.number]
    assert requeue_interrupted(optuna.load_study(study_name="s", storage=storage)) == 0  # once only
    rerun = [again.ask(space) for _ in waiting]  # the re-queued trials come back first, as drawn before
    assert {t.user_attrs[REQUEUED_FROM]: t.params["x"] for t in rerun} == {
        ctrl_c.number: ctrl_c.params["x"], killed.number: killed.params["x"]}
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL  # never left RUNNING
    assert [r.number for r in records_from_study(again)] == [0, 3]  # interrupted trials are not records
