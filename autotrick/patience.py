"""--patience N: a search stops once N ended trials in a row have not beaten the best by more than
--min-gain. Without --min-gain, for accuracy, the margin is the validation set's sampling noise
at the best value, sqrt(p (1 - p) / n): a gain below it is a few images. (No seeds are measured
during the search, so this is the noise of the measurement, a lower bound of the seed noise that
the confirmation measures afterwards.) Plain logic; autotrick.search hands it to Tune as a stopper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from autotrick.records import TrialRecord


class Patience:
    def __init__(self, patience: int, min_gain: float | None, mode: str, val_count: int) -> None:
        self.patience, self.min_gain, self.val_count = patience, min_gain, val_count
        self.sign = 1 if mode == "max" else -1
        self.best: float | None = None
        self.since = 0
        self.stopped = False

    @classmethod
    def after(cls, earlier: Iterable[TrialRecord], *, patience: int, min_gain: float | None, mode: str,
              val_count: int) -> Patience:
        """A patience that has seen an earlier session's trials (a resumed search), in their order."""
        made = cls(patience, min_gain, mode, val_count)
        for record in sorted(earlier, key=lambda r: r.number):
            made.record(record)
        return made

    def margin(self) -> float:
        if self.min_gain is not None:
            return self.min_gain
        if self.best is None or self.sign < 0 or not self.val_count:
            return 0.0
        return math.sqrt(max(self.best * (1 - self.best), 0.0) / self.val_count)

    def record(self, record: TrialRecord) -> None:
        value = self.sign * record.metric if record.successful and record.metric is not None else None
        if value is not None and (self.best is None or value > self.sign * self.best + self.margin()):
            self.best, self.since = record.metric, 0
        else:
            self.since += 1
        self.stopped = self.since >= self.patience

    def reason(self) -> str:
        how = f"--min-gain {self.min_gain:g}" if self.min_gain is not None else \
            f"{self.margin():.4f}, the validation set's sampling noise at the best value"
        return f"{self.since} trials in a row did not beat the best by more than {how} (--patience {self.patience})"
