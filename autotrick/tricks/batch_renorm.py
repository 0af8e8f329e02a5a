"""Batch renormalization (Ioffe, 2017): BatchNorm that corrects each batch's statistics toward the
running ones, for small or non-i.i.d. batches. The norm swap builds it for `norm.type: batch_renorm`.

In training, per channel, with the batch's mean mu_B and sigma_B = sqrt(var_B + eps) and the
running ones mu, sigma = sqrt(running_var + eps) (before this batch updates them):
    r = clip(sigma_B / sigma, 1 / r_max, r_max),    d = clip((mu_B - mu) / sigma, -d_max, d_max)
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta          (no gradient through r and d)
r_max = 1, d_max = 0 is BatchNorm; unclipped, y = gamma * (x - mu) / sigma + beta: the running
statistics, in training as at eval. They update as BatchNorm's do; eval is BatchNorm's.

The limits ramp over training as in the paper, which keeps r_max = 1, d_max = 0 for its first 5k
steps, then relaxes them to d_max = 5 by 25k and r_max = 3 by 40k. Here as fractions of training:
held for the first HOLD of it, then linear to D_MAX at D_FULL and to R_MAX at R_FULL.
Written here: torch has no batch renormalization.
"""

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

R_MAX, D_MAX = 3.0, 5.0
HOLD, D_FULL, R_FULL = 0.05, 0.15, 0.25


if TYPE_CHECKING:  # the type checker reads BatchNorm's attributes; at run time a plain mixin
    _BatchNormBase = nn.BatchNorm2d
else:
    _BatchNormBase = object


class _Renorm(_BatchNormBase):
    """The batch-renorm forward for a torch BatchNorm class (the running statistics, the affine
    parameters and eval are BatchNorm's). r_max and d_max are plain floats: set them, no sync."""

    r_max: float = 1.0
    d_max: float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        if not self.training or running_mean is None or running_var is None or tracked is None:
            return super().forward(x)  # eval, or no running statistics (track_running_stats=False)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1]
        if count < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xf = x.float()  # statistics in float32, under autocast too, as BatchNorm's
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
        std = (var + self.eps).sqrt()
        running_std = (running_var + self.eps).sqrt()
        r = (std / running_std).clamp(1 / self.r_max, self.r_max).detach()
        d = ((mean - running_mean) / running_std).clamp(-self.d_max, self.d_max).detach()
        y = (xf - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        _update_running(running_mean, running_var, tracked, self.momentum, mean.detach(),
                        var.detach() * count / (count - 1))
        return y.to(x.dtype)



@torch.no_grad()
def _update_running(running_mean: Tensor, running_var: Tensor, tracked: Tensor, momentum: float | None,
                    mean: Tensor, unbiased_var: Tensor) -> None:
    tracked.add_(1)
    # momentum None is BatchNorm's cumulative average (which reads the count back, as torch's does)
    factor = momentum if momentum is not None else 1.0 / float(tracked)
    running_mean.lerp_(mean, factor)
    running_var.lerp_(unbiased_var, factor)


class BatchRenorm1d(_Renorm, nn.BatchNorm1d):
    pass


class BatchRenorm2d(_Renorm, nn.BatchNorm2d):
    pass


class BatchRenorm3d(_Renorm, nn.BatchNorm3d):
    pass


# by the spatial dims after C, as norm.py's BatchNorm table (0: (N, C) vectors)
BATCH_RENORM: dict[int, type[nn.Module]] = {0: BatchRenorm1d, 1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}


def renorm_limits(progress: float) -> tuple[float, float]:
    """(r_max, d_max) at `progress` in [0, 1] of training: the ramp of the module docstring."""
    def ramp(full: float, top: float, start: float) -> float:
        return start + (top - start) * min(max((progress - HOLD) / (full - HOLD), 0.0), 1.0)

    return ramp(R_FULL, R_MAX, 1.0), ramp(D_FULL, D_MAX, 0.0)


def set_renorm_limits(model: nn.Module, r_max: float, d_max: float) -> None:
    for module in model.modules():
        if isinstance(module, _Renorm):
            module.r_max, module.d_max = r_max, d_max

