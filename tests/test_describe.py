"""What the MLflow UI says about a search in words, for the cases a reviewer meets: the tricks won,
the baseline won, the baseline diverged, the search was interrupted, a trial failed or was stopped."""

from __future__ import annotations

from autotrick.records import Outcome, SearchInfo, SearchResult, TrialRecord
from autotrick.tracking._describe import Links, best_note, search_note, trial_name, trial_note

INFO = SearchInfo(name="s", space="quick", model="cnn", data="digits", metric="val_accuracy", mode="max",
                  trials=4, max_epochs=15, batch_size=128, seed=0, device="cpu", grace_epochs=2)
BASE = {"optim.name": "sgd", "optim.lr": 0.05, "dropout.p": None}
LINKS = Links("7", {0: "r0", 1: "r1", 2: "r2", 3: "r3"})


def record(number: int, outcome: Outcome, metric: float | None, epochs: int = 15, **values: object) -> TrialRecord:
    history = [{"epoch": e, "val_accuracy": (metric or 0.5) * e / epochs} for e in range(1, epochs + 1)]
    return TrialRecord(number, {**BASE, **values}, outcome, metric, epochs, history, baseline=number == 0,
                       reason="non-finite training loss in epoch 3" if outcome is Outcome.DIVERGED else "")


def result(*records: TrialRecord, interrupted: bool = False) -> SearchResult:
    return SearchResult(info=INFO, records=list(records), interrupted=interrupted)


def test_the_winner_its_gain_its_tricks_and_the_counts() -> None:
    search = result(record(0, Outcome.FINISHED, 0.9), record(1, Outcome.FINISHED, 0.95, **{"optim.lr": 0.0123456}),
                    record(2, Outcome.ASHA_STOPPED, 0.6, epochs=2), record(3, Outcome.DIVERGED, None, epochs=3))
    note = search_note(search, LINKS)
    view = "?workflowType=machine_learning"
    assert note.splitlines()[0] == (
        f"**Winner: [trial-001 ★ best](#/experiments/7/runs/r1{view})**: val_accuracy **0.95**, "
        f"**+0.0500** over the baseline (0.9, [trial-000 (baseline)](#/experiments/7/runs/r0{view})).")
    assert ("4 of 4 ran, 2 finished all 15 epochs, 1 stopped early by ASHA, 1 failed (1 diverged)" in note
            and "**Stopped because** all 4 trials ran." in note)
    assert "| `optim.lr` | 0.01235 | 0.05 |" in note and "dropout.p" not in note  # only what differs, rounded
    assert best_note(search.best, search, LINKS).startswith(  # type: ignore[arg-type]
        "★ Best trial of search 's': val_accuracy 0.95, +0.0500 over the baseline")


def test_when_the_baseline_wins_or_diverges_the_parent_says_so() -> None:
    won = search_note(result(record(0, Outcome.FINISHED, 0.95), record(1, Outcome.FINISHED, 0.9, **{"optim.lr": 0.1})),
                      LINKS)
    assert won.startswith("**Winner: [trial-000 (baseline) ★ best]") and "**the baseline won**" in won
    assert "Its tricks: none" in won
    diverged = search_note(result(record(0, Outcome.DIVERGED, None, epochs=3), record(1, Outcome.FINISHED, 0.9)),
                           LINKS)
    assert ("no gain computed: the baseline (diverged) has no val_accuracy (non-finite training loss in epoch 3)"
            in diverged)


def test_an_interrupted_search_says_how_to_resume() -> None:
    note = search_note(result(record(0, Outcome.FINISHED, 0.9), interrupted=True), LINKS)
    assert "interrupted after 1 of 4 trials (resume it with `autotrick search --name s --resume`)" in note


def test_names_and_notes_of_stopped_and_failed_trials() -> None:
    stopped, failed = record(2, Outcome.ASHA_STOPPED, 0.6, epochs=2), record(3, Outcome.DIVERGED, None, epochs=3)
    assert trial_name(stopped, 15) == "trial-002 (stopped at 2/15)"
    assert trial_name(failed, 15) == "trial-003 (diverged)"
    assert trial_note(stopped, INFO, "val_accuracy_at_epoch_2").startswith(
        "Stopped early by ASHA after 2 of 15 epochs (val_accuracy 0.6 then)")
    assert trial_note(failed, INFO, None).startswith(
        "**diverged** at epoch 3: non-finite training loss in epoch 3")
