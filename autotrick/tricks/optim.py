"""Optimizer and its parameter groups, weight decay and an L1 penalty.

weight decay: L2 (decoupled for adamw); `no_decay_bias_norm` puts biases and norm parameters in a
group with weight_decay 0 (they carry no overfitting capacity, decaying them only hurts).
L1: loss += l1 * sum(|w|) over the weights of conv and linear layers.
lars / lamb: a per-layer trust ratio on SGD with momentum / on Adam, for large batches; biases and
norm parameters are left out of the adaptation (autotrick.tricks.large_batch has the formulas).
Parameter groups may carry their own lr (the finetune trick's head and layer-wise decay).
"""

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autotrick.params import Param, Trick, When
from autotrick.tricks.finetune import split_by_lr
from autotrick.tricks.init import WEIGHT_LAYERS
from autotrick.tricks.large_batch import Lamb, Lars
from autotrick.tricks.norm import is_norm

OPTIMIZERS = ("sgd", "adamw", "adam", "rmsprop", "adagrad", "lars", "lamb")
_SGD = When("name", ("sgd",))
_MOMENTUM = When("name", ("sgd", "lars"))

OPTIM = Trick(
    name="optim",
    summary="optimizer, lr (log scale), weight decay, no decay on bias/norm, L1 penalty",
    params=(
        Param("name", "choice", "sgd", "optimizer", choices=OPTIMIZERS),
        Param("lr", "float", 0.05, "peak learning rate", low=1e-3, high=0.3, log=True, bounds=(1e-7, 10.0)),
        Param("momentum", "float", 0.9, "SGD / LARS momentum", low=0.0, high=0.99, bounds=(0.0, 0.999),
              when=_MOMENTUM),
        Param("nesterov", "bool", False, "SGD Nesterov momentum", when=_SGD),
        Param("weight_decay", "float", 0.0, "L2 weight decay (decoupled for adamw); 0 is off",
              low=0.0, high=0.01, bounds=(0.0, 1.0)),
        Param("no_decay_bias_norm", "bool", False, "exempt biases and norm parameters from weight decay"),
        Param("l1", "float", 0.0, "L1 penalty coefficient on conv/linear weights; 0 is off",
              low=0.0, high=1e-4, bounds=(0.0, 1.0)),
        Param("trust_coef", "float", 0.001, "LARS trust coefficient eta: trust = eta ||w|| / (||g|| + wd ||w||)",
              low=1e-3, high=0.1, log=True, bounds=(1e-6, 10.0), when=When("name", ("lars",))),
    ),
)


# Every optimizer but SGD takes only lr here; its weight decay comes from the parameter groups.
_ADAPTIVE: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,  # decoupled: w -= lr * wd * w, outside the adaptive step
    "adam": torch.optim.Adam,  # L2: g += wd * w, rescaled by the adaptive step like any gradient
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


_FUSED = ("sgd", "adam", "adamw")  # torch's optimizers with a fused CUDA kernel


def param_groups(model: nn.Module, weight_decay: float, no_decay_bias_norm: bool,
                 split_bias_norm: bool = False) -> list[dict[str, Any]]:
    """The trainable parameters, split into a decayed group and, with `no_decay_bias_norm`, an
    undecayed one holding the biases (every parameter with ndim <= 1) and all norm-layer parameters.
    `split_bias_norm` splits them anyway (LARS/LAMB leave those out of the adaptation): the groups
    then say so with "adapt"."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bias_norm and not split_bias_norm:
        return [{"params": trainable, "weight_decay": weight_decay}]
    norm_ids = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters()}

    def exempt(p: nn.Parameter) -> bool:
        return p.ndim <= 1 or id(p) in norm_ids

    def group(params: list[nn.Parameter], decay: float, adapt: bool) -> dict[str, Any]:
        return {"params": params, "weight_decay": decay, **({"adapt": adapt} if split_bias_norm else {})}

    groups = [group([p for p in trainable if not exempt(p)], weight_decay, True),
              group([p for p in trainable if exempt(p)], 0.0 if no_decay_bias_norm else weight_decay, False)]
    return [g for g in groups if g["params"]]  # a model may have no bias, or nothing but biases


def build_optimizer(model: nn.Module, *, name: str, lr: float, momentum: float = 0.9, nesterov: bool = False,
                    weight_decay: float = 0.0, no_decay_bias_norm: bool = False, l1: float = 0.0,
                    trust_coef: float = 0.001,
                    lr_multipliers: Mapping[int, float] | None = None) -> torch.optim.Optimizer:
    """The optimizer `name` over the trainable parameters of `model`, at peak learning rate `lr`;
    `lr_multipliers` (parameter id -> factor) gives groups their own peak lr.

    `l1` is accepted so that every optim value can be passed with `**`; it acts on the loss
    (see `l1_penalty`), not on the update.
    """
    groups = param_groups(model, weight_decay, no_decay_bias_norm, split_bias_norm=name in ("lars", "lamb"))
    if lr_multipliers is not None:
        groups = split_by_lr(groups, lr_multipliers, lr)
    if name == "lars":
        return Lars(groups, lr=lr, momentum=momentum, trust_coef=trust_coef)
    if name == "lamb":
        return Lamb(groups, lr=lr)
    # On CUDA, the fused kernels: one launch for all parameters, and fp16's grad scaler hands them
    # its inf check as a tensor instead of reading it back before every step (a host sync).
    fused = {"fused": True} if name in _FUSED and all(p.is_cuda for g in groups for p in g["params"]) else {}
    if name == "sgd":
        # Nesterov looks ahead along the momentum; with momentum 0 there is nothing to look along
        # (torch raises), and a search draws the two independently, so it is simply off.
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, **fused)
    if name not in _ADAPTIVE:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return _ADAPTIVE[name](groups, lr=lr, **fused)


def l1_penalty(model: nn.Module, l1: float) -> torch.Tensor | float:
    """l1 * sum(|w|) over the weights of the conv and linear layers, to add to the loss."""
    if l1 == 0:
        return 0.0  # the common case: skip a pass over every weight, every step
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    return l1 * sum(w.abs().sum() for w in weights)
