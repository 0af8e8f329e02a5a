"""--patience's rule on plain records: what counts as a gain, and when the search stops."""

from __future__ import annotations

import math

from autotrick.patience import Patience
from autotrick.records import Outcome, TrialRecord


def trial(number: int, metric: float | None, outcome: Outcome = Outcome.FINISHED) -> TrialRecord:
    return TrialRecord(number=number, values={}, outcome=outcome, metric=metric, epochs=3)


def test_without_min_gain_a_gain_within_the_validation_sampling_noise_does_not_count() -> None:
    patience = Patience(2, None, "max", val_count=360)
    patience.record(trial(0, 0.95))
    assert math.isclose(patience.margin(), math.sqrt(0.95 * 0.05 / 360))  # 0.0115: four images of 360
    patience.record(trial(1, 0.955))  # +0.005: within the noise
    patience.record(trial(2, None, Outcome.ASHA_STOPPED))
    assert patience.stopped and patience.best == 0.95
    assert patience.reason().startswith("2 trials in a row did not beat the best by more than 0.0115")


def test_a_real_gain_resets_the_count_and_a_loss_mode_is_signed() -> None:
    patience = Patience.after([trial(0, 0.5), trial(1, 0.4)], patience=2, min_gain=0.05, mode="min", val_count=0)
    assert patience.best == 0.4 and patience.since == 0 and not patience.stopped
    patience.record(trial(2, 0.38))  # better, but by less than --min-gain
    assert patience.since == 1 and not patience.stopped
    patience.record(trial(3, 0.39))
    assert patience.stopped
