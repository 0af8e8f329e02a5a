"""Gradient clipping by global norm: g = g * min(1, max_norm / ||g||_2)."""

import torch
from torch import nn

from autotrick.params import Param, Trick

CLIP = Trick(
    name="clip",
    summary="gradient clipping: g = g * min(1, max_norm / ||g||)",
    params=(Param("max_norm", "float", None, "global gradient norm cap; null is off", low=0.5, high=5.0,
                  log=True, bounds=(1e-4, 1e4), nullable=True),),
)


def clip_gradients(model: nn.Module, max_norm: float | None) -> torch.Tensor | None:
    """Scale the gradients so their global L2 norm is at most `max_norm`; return the norm before
    clipping as a tensor (no host sync on a GPU: call float() only when you need it), or None,
    and nothing done, when `max_norm` is None. With an fp16 GradScaler, call
    `scaler.unscale_(optimizer)` first, or the cap applies to the scaled gradients."""
    if max_norm is None:
        return None
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
