"""Which modules are norm layers: what the norm swap replaces, and what the classifier finder
(head.py) looks past (a head may end in a norm). See norm.py for the layers recognized."""

from __future__ import annotations

import torch
from torch import nn

# torch's norm layers; a subclass of one of them is a norm too.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)
_FUSED_CHILDREN = ("drop", "act")  # what a fused norm-activation layer applies after its norm, in order


def is_norm(module: nn.Module) -> bool:
    """Whether `module` is a norm layer the swap recognizes (module docstring)."""
    return (isinstance(module, NORM_LAYERS) or has_normalized_shape(module) or _is_frozen_batch_norm(module)) \
        and _extras(module) is not None


def has_normalized_shape(module: nn.Module) -> bool:
    shape = getattr(module, "normalized_shape", None)
    return isinstance(shape, tuple | list | torch.Size) and hasattr(module, "eps")


def _is_frozen_batch_norm(module: nn.Module) -> bool:
    buffers = dict(module.named_buffers(recurse=False))
    return "running_mean" in buffers and "running_var" in buffers and hasattr(module, "eps")


def _extras(module: nn.Module) -> tuple[nn.Module, ...] | None:
    """The modules a fused norm applies after its norm (drop, act); None if it has other children."""
    children = dict(module.named_children())
    if not set(children) <= set(_FUSED_CHILDREN):
        return None
    return tuple(children[name] for name in _FUSED_CHILDREN if name in children)
