"""Early stopping of a training run: stop once validation accuracy has not improved for
`patience` epochs. (Stopping poor *trials* of a search early is ASHA's job, in autotrick.search.)"""

import math
from dataclasses import dataclass, field

from autotrick.params import Param, Trick

EARLY_STOP = Trick(
    name="early_stop",
    summary="stop training after `patience` epochs without a better validation accuracy",
    params=(Param("patience", "int", None, "epochs without improvement; null is off", low=2, high=10,
                  bounds=(1, 10000), nullable=True),),
)


@dataclass
class EarlyStopper:
    """Feed it the validation accuracy once per epoch; it says when to stop (higher is better)."""

    patience: int | None
    best: float = field(default=-math.inf, init=False)
    epochs_without_improvement: int = field(default=0, init=False)

    def update(self, metric: float) -> bool:
        """Record one epoch's metric; True once `patience` epochs in a row have not beaten the best.
        A NaN never improves. With patience None it never stops."""
        if metric > self.best:
            self.best, self.epochs_without_improvement = metric, 0
        else:
            self.epochs_without_improvement += 1
        return self.patience is not None and self.epochs_without_improvement >= self.patience
