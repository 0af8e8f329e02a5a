"""The trick registry: every documented trick, in the order its parameters are drawn and applied.

The CLI (`autotrick tricks`), the search-space validator, recipes and the tests are all driven
from `TRICKS`; each trick's module holds its formula and how it applies.
"""

from autotrick.params import Param, Trick, Value
from autotrick.tricks.augment import AUGMENT
from autotrick.tricks.clipping import CLIP
from autotrick.tricks.distill import DISTILL
from autotrick.tricks.dropout import DROPOUT
from autotrick.tricks.early_stop import EARLY_STOP
from autotrick.tricks.finetune import FINETUNE
from autotrick.tricks.init import INIT
from autotrick.tricks.loss import LOSS
from autotrick.tricks.mixing import MIX
from autotrick.tricks.norm import NORM
from autotrick.tricks.optim import OPTIM
from autotrick.tricks.precision import PRECISION
from autotrick.tricks.pruning import PRUNE
from autotrick.tricks.quant import QUANT
from autotrick.tricks.reparam import REPARAM
from autotrick.tricks.schedule import SCHEDULE
from autotrick.tricks.smoothing import SMOOTHING

# Tricks added later come last, so the draw order of the earlier ones (and their studies) stays.
TRICKS: tuple[Trick, ...] = (NORM, DROPOUT, INIT, OPTIM, SCHEDULE, SMOOTHING, MIX, AUGMENT, PRECISION,
                             CLIP, EARLY_STOP, PRUNE, LOSS, DISTILL, FINETUNE, REPARAM, QUANT)
BY_NAME: dict[str, Trick] = {t.name: t for t in TRICKS}


def all_params() -> dict[str, Param]:
    """Every parameter by its dotted key, e.g. "norm.groups"."""
    return {t.key(p.name): p for t in TRICKS for p in t.params}


def defaults() -> dict[str, Value]:
    """The baseline: every parameter at its default (conditional ones included)."""
    return {key: value for t in TRICKS for key, value in t.defaults().items()}


__all__ = ["BY_NAME", "TRICKS", "all_params", "defaults"]
