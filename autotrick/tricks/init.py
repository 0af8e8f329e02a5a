"""Weight initialization.

xavier (Glorot): std = gain * sqrt(2 / (fan_in + fan_out)); uniform bound = sqrt(3) * std.
kaiming (He):    std = gain / sqrt(fan), fan = fan_in or fan_out, gain = sqrt(2) for relu.
orthogonal:      W, flattened to (out, fan_in), has orthonormal rows (W W^T = I) if out <= fan_in,
                 else orthonormal columns (W^T W = I).
trunc_normal:    N(0, std^2) cut at ±2 std (the kept values' own std is 0.88 std).
gain is 1 except for kaiming. These apply to every conv (transposed too) and linear weight;
biases are zeroed and norm weights set to 1.

zero_last_norm (Goyal et al., 2017): gamma = 0 in the norm that closes each residual branch, so
that y = x + branch(x) starts as y = x. Which norm that is comes from the model's structure, not
from class names: one traced forward pass on an example batch (see trace.py) finds every
addition a + b where operand a is exactly 0 once some norm's weight is 0 (its output reaches the
addition through layer scales, drop paths, activations with f(0) = 0, bias-free layers), and b,
the skip, does not depend on the norm's output and is either the branch's own input (an
identity shortcut) or a shorter path from it that ends in a norm too (a projection shortcut,
conv + norm; two equal paths, like a distilled ViT's two heads, are no residual). The norm
nearest the addition is zeroed. A norm is never zeroed if zeroing it would also zero a skip, or
both operands of an addition: a block without a skip keeps its norms. A pre-norm transformer
branch (x + attn(norm(x))) counts: its norm is zeroed when the layers after it have no bias,
which silences the branch. Last, if the zeroed norms leave the classifier's input the same for
every image (a ViT reads a class token that only attention brings the image into), the deepest
are given their weights back until it is not (unless it was so before: another trick's doing,
which the trainer's model check reports).
"""

import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from autotrick.errors import ConfigError, TrickNote
from autotrick.params import Param, Trick, When
from autotrick.tricks.head import final_layers
from autotrick.tricks.norm_layers import is_norm
from autotrick.tricks.trace import Trace, input_reaches_classifier, trace

SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
           "orthogonal", "trunc_normal")
_KAIMING = When("scheme", ("kaiming_uniform", "kaiming_normal"))

INIT = Trick(
    name="init",
    summary="weight initializer: xavier std=sqrt(2/(fan_in+fan_out)), kaiming std=gain/sqrt(fan)",
    params=(
        Param("scheme", "choice", "default", "initializer; default keeps the model's own", choices=SCHEMES),
        Param("mode", "choice", "fan_in", "kaiming: preserve forward (fan_in) or backward (fan_out) variance",
              choices=("fan_in", "fan_out"), when=_KAIMING),
        Param("nonlinearity", "choice", "relu", "kaiming gain: relu sqrt(2), leaky_relu sqrt(2/(1+0.01^2))",
              choices=("relu", "leaky_relu"), when=_KAIMING),
        Param("std", "float", 0.02, "trunc_normal standard deviation, cut at ±2 std",
              low=0.005, high=0.1, log=True, bounds=(1e-4, 1.0), when=When("scheme", ("trunc_normal",))),
        Param("zero_last_norm", "bool", False, "zero the last norm weight of each residual block"),
    ),
)

# The layers whose weights an initializer (and pruning) touches.
FanMode = Literal["fan_in", "fan_out"]  # the choices of init.mode
Nonlinearity = Literal["relu", "leaky_relu"]  # the choices of init.nonlinearity
WeightLayer = (nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d
               | nn.Linear)
WEIGHT_LAYERS: tuple[type[WeightLayer], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)
_LEAKY_SLOPE = 0.01  # kaiming's `a`; torch ignores it for relu


def _init_weight(weight: Tensor, scheme: str, mode: FanMode, nonlinearity: Nonlinearity, std: float) -> None:
    """Draw `weight` in place by `scheme`, with the formulas of the module docstring."""
    match scheme:
        case "xavier_uniform":
            nn.init.xavier_uniform_(weight)
        case "xavier_normal":
            nn.init.xavier_normal_(weight)
        case "kaiming_uniform":
            nn.init.kaiming_uniform_(weight, a=_LEAKY_SLOPE, mode=mode, nonlinearity=nonlinearity)
        case "kaiming_normal":
            nn.init.kaiming_normal_(weight, a=_LEAKY_SLOPE, mode=mode, nonlinearity=nonlinearity)
        case "orthogonal":
            nn.init.orthogonal_(weight)
        case "trunc_normal":
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        case _:
            raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def _fill(param: Tensor | None, value: float) -> None:
    if param is not None:  # a layer built with bias=False or affine=False has None
        nn.init.constant_(param, value)


def _closes_branch(record: Trace, norm: nn.Module, node: int, skip: int, skip_norm: nn.Module | None) -> bool:
    """Whether `norm`, whose zero makes `node` zero, closes a residual branch that `skip` is the
    shortcut of: `skip` is the branch's own input (an identity shortcut), or a shorter path from
    it that ends in another norm (a projection shortcut, conv + norm); and zeroing `norm` leaves
    `skip` as it is. Two equal paths (a distilled ViT's two heads) are no branch and shortcut."""
    calls = record.calls_of(norm)
    skip_ancestors = record.ancestors(skip)
    if any(out in skip_ancestors for call in calls for out in call.outputs):
        return False
    branch_input = set().union(*(record.ancestors(call.inputs[0]) for call in calls if call.inputs))
    if skip in branch_input:
        return True
    if skip_norm is None or not skip_ancestors & branch_input:
        return False
    mine = record.ancestors(node)
    return len(mine - skip_ancestors) > len(skip_ancestors - mine)


def closing_norms(model: nn.Module, example: Tensor) -> tuple[list[nn.Module], Trace]:
    """The norm that closes each residual branch of `model` (module docstring), in model order,
    and the trace they were found in."""
    norms = tuple(m for m in model.modules() if is_norm(m) and isinstance(getattr(m, "weight", None), Tensor))
    record = trace(model, example, zero_sources=norms)
    closing: set[nn.Module] = set()
    never: set[nn.Module] = set()  # norms whose zero would also zero a skip
    for addition in record.additions:
        (a, b), (norm_a, norm_b) = addition.operands, addition.zeroed_by
        if norm_a is norm_b:  # both operands, or neither, vanish with the same norm
            if norm_a is not None:
                never.add(norm_a)
            continue
        chosen = next((norm for norm, node, skip, skip_norm in ((norm_a, a, b, norm_b), (norm_b, b, a, norm_a))
                       if norm is not None and _closes_branch(record, norm, node, skip, skip_norm)), None)
        if chosen is not None:
            closing.add(chosen)
        never.update(n for n in (norm_a, norm_b) if n is not None and n is not chosen)
    return [m for m in norms if m in closing and m not in never], record


def initialize(model: nn.Module, example: Tensor | None = None, *, scheme: str, mode: FanMode = "fan_in",
               nonlinearity: Nonlinearity = "relu", std: float = 0.02, zero_last_norm: bool = False) -> nn.Module:
    """Re-initialize `model` in place with `scheme` (see the module docstring) and return it.

    "default" keeps every weight as the model made it; `zero_last_norm` applies either way, after
    the scheme, and needs `example`, a batch the model takes (one forward pass finds the branches).
    """
    if scheme != "default":
        for module in model.modules():
            if isinstance(module, WEIGHT_LAYERS):
                _init_weight(module.weight, scheme, mode, nonlinearity, std)
                _fill(module.bias, 0.0)
            elif is_norm(module):
                _fill(getattr(module, "weight", None), 1.0)
                _fill(getattr(module, "bias", None), 0.0)
    if zero_last_norm:
        if example is None:
            raise ConfigError("init.zero_last_norm finds each residual branch in one forward pass: "
                              "give an example batch (apply(..., example=x))")
        _zero_closing_norms(model, example)
    return model


@torch.no_grad()
def _zero_closing_norms(model: nn.Module, example: Tensor) -> None:
    """Zero the closing norms; then, while the output no longer depends on the input (a ViT reads
    its class token, which only attention brings the image into: zeroing every attention branch
    leaves it constant), give the deepest zeroed norm its weight back."""
    norms, record = closing_norms(model, example)
    classifiers = final_layers(record) if norms else []
    reached = bool(norms) and input_reaches_classifier(model, example, classifiers)  # else: no help to give
    params = [norm.get_parameter("weight") for norm in norms]  # closing norms have one (closing_norms)
    weights = [param.detach().clone() for param in params]
    for param in params:
        nn.init.zeros_(param)
    restored = 0
    while reached and restored < len(norms) and not input_reaches_classifier(model, example, classifiers):
        restored += 1
        params[-restored].copy_(weights[-restored])
    zeroed = norms[:len(norms) - restored]
    names = {module: name for name, module in model.named_modules()}
    if zeroed:
        shown = ", ".join(names[n] or "(the model)" for n in zeroed[:3]) + (" ..." if len(zeroed) > 3 else "")
        message = f"init.zero_last_norm: zeroed the norm closing {len(zeroed)} residual branches: {shown}"
    else:
        message = "init.zero_last_norm: no residual branch ends in a norm here; nothing zeroed"
    if restored:
        message += (f"; left the last {restored} as they were: with them zeroed, the output no longer "
                    "depended on the input")
    warnings.warn(message, TrickNote, stacklevel=3)
