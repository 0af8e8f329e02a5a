"""Dropout: set p on every existing Dropout, and have one right before the final classifier.

In training y = x * m / (1 - p), m ~ Bernoulli(1 - p) per element (per channel for Dropout1d/2d/3d);
at eval y = x.

The final classifier is the layer that makes the logits, whatever the head looks like (ResNet's
`fc`, ViT's `heads.head`, a Linear at the end of a Sequential `classifier` after an activation,
SqueezeNet's final conv): with an example batch, one traced forward pass (see trace.py) finds
the classifier (head.py), and whether a Dropout feeds each of its layers directly (through
reshapes only). If one does, it gets p like the others; if not, nn.Dropout(p) is put in front
of the classifier. Without an example, the classifier is head.py's fallback (the last Linear),
fed by a Dropout if one comes right before it in a Sequential. What was done, and where, is said in one
line (a TrickNote warning, which the trainer prints).
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from autotrick.errors import ConfigError, TrickNote
from autotrick.params import Param, Trick
from autotrick.tricks.head import classifier, final_layers, module_paths, replace_module
from autotrick.tricks.trace import VIEW_OPS, Trace, trace

DROPOUT = Trick(
    name="dropout",
    summary="dropout probability p on every Dropout, and a Dropout right before the final classifier",
    params=(
        Param("p", "float", None, "drop probability; null keeps the model's own", low=0.0, high=0.5,
              bounds=(0.0, 0.95), nullable=True),
    ),
)

DropoutLayer = nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout | nn.FeatureAlphaDropout
DROPOUT_LAYERS: tuple[type[DropoutLayer], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


def _fed_by_dropout(record: Trace, layer: nn.Module) -> bool:
    """Whether a Dropout's output reaches `layer`'s input through reshapes and views only."""
    made = record.made_by()
    for call in record.calls_of(layer):
        node = call.inputs[0] if call.inputs else None
        while node is not None:
            if any(isinstance(m, DROPOUT_LAYERS) for m in made.get(node, [])):
                return True
            data = [p for p in record.parents[node] if record.is_data[p]]
            node = data[0] if record.op[node] in VIEW_OPS and len(data) == 1 else None
    return False


def classifiers(model: nn.Module, example: Tensor | None) -> list[tuple[nn.Module, bool]]:
    """The final classifier(s) of `model`, each with whether a Dropout feeds it (module docstring)."""
    if example is not None:
        record = trace(model, example)
        return [(layer, _fed_by_dropout(record, layer)) for layer in final_layers(record)]
    return [(layer, _after_dropout(model, layer)) for layer in classifier(model, None)]


def _after_dropout(model: nn.Module, layer: nn.Module) -> bool:
    """Without a forward pass: whether `layer` follows a Dropout in a Sequential, with only
    reshaping layers between."""
    for parent in model.modules():
        if isinstance(parent, nn.Sequential) and any(child is layer for child in parent):
            before = list(parent)[:[id(c) for c in parent].index(id(layer))]
            for child in reversed(before):
                if isinstance(child, DROPOUT_LAYERS):
                    return True
                if not isinstance(child, nn.Flatten | nn.Unflatten | nn.Identity):
                    break
    return False


def _put_before(model: nn.Module, layer: nn.Module, p: float) -> tuple[nn.Module, list[str]]:
    """nn.Dropout(p) in front of `layer` everywhere it is registered; returns the model (or the
    new Sequential, when `model` is `layer`) and where it went."""
    paths = module_paths(model, layer)
    return replace_module(model, layer, nn.Sequential(nn.Dropout(p), layer)), [path or "(the model)" for path in paths]


def set_dropout(model: nn.Module, example: Tensor | None = None, *, p: float | None) -> nn.Module:
    """Set the drop probability of every dropout layer of `model` to `p`, in place, and make sure a
    Dropout feeds the final classifier (module docstring), unless p is 0: that one would be the
    identity. None leaves the model as it is. Returns `model`, or the new Sequential when `model`
    is itself the classifier. `example`: a batch the model takes, to find the classifier."""
    if p is None:
        return model
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_LAYERS)]
    for dropout in dropouts:
        dropout.p = p
    found = classifiers(model, example)
    if not found and not dropouts:
        raise ConfigError(f"dropout: {type(model).__name__} has neither a Dropout nor a classifier layer "
                          "to put one before")
    added: list[str] = []
    if p > 0:
        for layer, fed in found:
            if not fed:
                model, paths = _put_before(model, layer, p)
                added += paths
    where = f"; added Dropout({p:g}) before {', '.join(added)}" if added else \
        ("; one of them feeds the classifier" if found and p > 0 else "")
    warnings.warn(f"dropout: p={p:g} on {len(dropouts)} existing Dropout layers{where}", TrickNote, stacklevel=3)
    return model
