"""Dropout: set p on every existing Dropout; insert one before the final classifier if there is none.

In training y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element (per channel for Dropout1d/2d/3d);
at eval y = x.
"""

from torch import nn

from autotrick.errors import ConfigError
from autotrick.params import Param, Trick

DROPOUT = Trick(
    name="dropout",
    summary="dropout probability p on every Dropout (one added before the classifier if none)",
    params=(
        Param("p", "float", None, "drop probability; null keeps the model's own", low=0.0, high=0.5,
              bounds=(0.0, 0.95), nullable=True),
    ),
)

DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


def _insert_before_classifier(model: nn.Module, p: float) -> nn.Module:
    """Put nn.Dropout(p) in front of the last nn.Linear registered, the classifier of most models.

    Returns `model`, or the new Sequential when `model` is itself that Linear.
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"dropout: {type(model).__name__} has neither a Dropout nor a Linear "
                          "classifier to put one before")
    parent_name, _, attr = linears[-1].rpartition(".")
    classifier = model.get_submodule(linears[-1])
    wrapped = nn.Sequential(nn.Dropout(p), classifier)
    if not attr:
        return wrapped
    setattr(model.get_submodule(parent_name), attr, wrapped)
    return model


def set_dropout(model: nn.Module, *, p: float | None) -> nn.Module:
    """Set the drop probability of every dropout layer of `model` to `p`, in place, and return it.

    A model with no dropout layer gets nn.Dropout(p) before its classifier (the last Linear), unless
    p is 0: that one would be the identity. None leaves the model as it is.
    """
    if p is None:
        return model
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_LAYERS)]
    for dropout in dropouts:
        dropout.p = p
    if dropouts or p == 0:
        return model
    return _insert_before_classifier(model, p)
