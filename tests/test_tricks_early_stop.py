"""Early stopping (tricks/early_stop.py): exactly patience epochs without improvement."""

from autotrick.tricks.early_stop import EarlyStopper


def test_early_stopper_stops_after_exactly_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopper(patience=3)
    # 0.6 improves and resets the count; then 0.6 (a tie), 0.5, 0.55 are three epochs without improvement.
    decisions = [stopper.update(acc) for acc in (0.5, 0.4, 0.45, 0.6, 0.6, 0.5, 0.55)]
    assert decisions == [False, False, False, False, False, False, True]
    assert stopper.best == 0.6


def test_early_stopper_without_patience_never_stops() -> None:
    stopper = EarlyStopper(patience=None)
    assert not any(stopper.update(0.1) for _ in range(100))
