"""Learning-rate schedule, stepped every iteration so that warmup is smooth.

`lr_factor` gives the multiplier of the peak lr at optimizer step `step` (0-based):

1. linear warmup:  lr = peak * (step + 1) / warmup_steps         for step < warmup_steps
   ((step + 1), not step: the first update runs at peak / warmup_steps rather than at lr 0,
   and the last warmup step reaches the peak)
2. then, with t = steps since warmup, T = t_max epochs in steps (default: the remaining steps):
   constant: lr = peak
   cosine:   lr = eta_min + (peak - eta_min) * (1 + cos(pi * min(t, T) / T)) / 2
   linear:   lr = peak - (peak - eta_min) * min(t, T) / T
   step:     lr = peak * gamma ** floor(t / (step_epochs epochs in steps))
   where eta_min = min_lr_ratio * peak; past T, cosine and linear stay at eta_min.
"""

import functools
import math
from typing import Any

import torch

from autotrick.params import Param, Trick, When

SCHEDULES = ("constant", "cosine", "linear", "step")
_DECAYS = When("name", ("cosine", "linear"))

SCHEDULE = Trick(
    name="schedule",
    summary="linear warmup, then constant | cosine (T_max, eta_min) | linear | step decay, per step",
    params=(
        Param("name", "choice", "constant", "shape after warmup", choices=SCHEDULES),
        Param("warmup_epochs", "float", 0.0, "linear warmup length in epochs (fractions allowed); 0 is off",
              low=0.0, high=3.0, bounds=(0.0, 1000.0)),
        Param("t_max", "int", None, "cosine/linear period T_max in epochs; null: the remaining epochs",
              low=1, high=30, bounds=(1, 10000), nullable=True, when=_DECAYS),
        Param("min_lr_ratio", "float", 0.0, "eta_min = min_lr_ratio * peak lr", low=0.0, high=0.1,
              bounds=(0.0, 1.0), when=_DECAYS),
        Param("step_epochs", "int", 5, "step decay every step_epochs epochs", low=1, high=20,
              bounds=(1, 10000), when=When("name", ("step",))),
        Param("gamma", "float", 0.1, "step decay factor", low=0.05, high=0.5, bounds=(0.0, 1.0),
              when=When("name", ("step",))),
    ),
)


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, name: str, warmup_epochs: float = 0.0,
              t_max: int | None = None, min_lr_ratio: float = 0.0, step_epochs: int = 5,
              gamma: float = 0.1) -> float:
    """lr / peak lr at optimizer step `step` (0-based): the formulas of this module's docstring."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = step - warmup_steps
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** (t // (step_epochs * steps_per_epoch))
    if name not in ("cosine", "linear"):
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    # max(1, ...): a warmup as long as the whole run leaves no steps to decay over
    period = max(1, t_max * steps_per_epoch if t_max is not None else epochs * steps_per_epoch - warmup_steps)
    progress = min(t, period) / period  # 0 -> 1, then held at 1: eta_min after T
    decay = (1 + math.cos(math.pi * progress)) / 2 if name == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int, start_step: int = 0,
                    **schedule_values: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over the optimizer's lrs (taken as the peak); call `.step()` after every
    `optimizer.step()`, so that step k runs at peak * lr_factor(k). `start_step` carries a
    schedule on, for an optimizer that replaces one at that step (after structured pruning)."""
    factor = functools.partial(lr_factor, steps_per_epoch=steps_per_epoch, epochs=epochs, **schedule_values)
    if start_step == 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # the peak, as LambdaLR keeps it
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)
