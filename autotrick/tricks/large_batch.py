"""LARS and LAMB: a learning rate per layer, scaled by a trust ratio, for large batches.

For each weight tensor w (a layer) with gradient g and weight decay wd:
LARS (You et al., 2017), SGD with momentum:
    trust = eta * ||w|| / (||g|| + wd * ||w||)
    v = momentum * v + trust * (g + wd * w);   w = w - lr * v
LAMB (You et al., 2020), Adam:
    m = b1 * m + (1 - b1) * g;   s = b2 * s + (1 - b2) * g^2   (bias-corrected: m^, s^ at step t)
    u = m^ / (sqrt(s^) + eps) + wd * w
    trust = ||w|| / ||u||;   w = w - lr * trust * u
trust is 1 where a norm is 0 (a layer initialized to zero). Biases and norm-layer parameters
(groups with adapt=False) are left out of the adaptation, trust = 1, as both papers do: their
norms say nothing of a layer's scale. The trust ratios stay tensors: no host sync per step.

Written here: torch has neither; timm's Lars and Lamb would make timm a dependency of the core,
where it is optional, and torchao has no LARS or LAMB.
"""

from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch import Tensor


def _trust(numerator: Tensor, denominator: Tensor, scale: float = 1.0) -> Tensor:
    """scale * numerator / denominator, or 1 where either is 0."""
    ratio = scale * numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)
    return torch.where((numerator > 0) & (denominator > 0), ratio, torch.ones_like(ratio))


class Lars(torch.optim.Optimizer):
    """LARS: SGD with momentum whose step for each layer is scaled by eta ||w|| / (||g|| + wd ||w||)."""

    def __init__(self, params: Iterable[Any], lr: float, *, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coef: float = 0.001, adapt: bool = True) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coef": trust_coef, "adapt": adapt})

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    update.mul_(_trust(w_norm, g_norm + wd * w_norm, group["trust_coef"]))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam whose step for each layer is scaled by ||w|| / ||u||, u the Adam update plus wd * w."""

    def __init__(self, params: Iterable[Any], lr: float, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, adapt: bool = True) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "adapt": adapt})

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["m"], state["s"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1  # a Python int: the bias corrections need no tensor read back
                m, s, t = state["m"], state["s"], state["step"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                s.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (m / (1 - b1**t)) / ((s / (1 - b2**t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if group["adapt"]:
                    update.mul_(_trust(torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)))
                p.add_(update, alpha=-group["lr"])
        return loss
