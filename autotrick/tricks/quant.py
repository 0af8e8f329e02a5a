"""Quantization-aware training (QAT): the last `qat` epochs train through fake INT8 quantization,
so the weights learn to live on the grid that the INT8 export (autotrick.deploy) puts them on.

Each conv and linear layer computes with
    weights, per output channel c, symmetric int8:
        s_c = max|w_c| / 127,    w_q = clamp(round(w / s_c), -128, 127) * s_c
    its input, per tensor, asymmetric uint8 over the range [lo, hi] seen in training (a moving
    average of each batch's min and max, MOMENTUM per step; 0 always inside it):
        s = (hi - lo) / 255,  z = clamp(round(-lo / s), 0, 255),
        x_q = (clamp(round(x / s) + z, 0, 255) - z) * s
the formats the export's U8S8 quantization uses. The rounding's gradient is the straight-through
estimator (1 inside the clamp range, 0 outside): torch.fake_quantize_per_channel_affine and
fake_quantize_per_tensor_affine, core ops (torch.ao.quantization, deprecated, is not used).
Everything stays on the device: no read-back per step.
The weights' fake quantization is a parametrization, so exporting the model folds it in (the weights
leave on the int8 grid); the input hooks are removed then too. While pruning's mask is held (the
finetune epochs after magnitude pruning), only the layers' inputs are fake-quantized.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from autotrick.params import Param, Trick
from autotrick.tricks.init import WEIGHT_LAYERS

QUANT = Trick(
    name="quant",
    summary="quantization-aware training: the last epochs through fake int8 quantization",
    params=(Param("qat", "int", 0, "the last epochs trained through fake int8 quantization (weights per channel, "
                  "inputs per tensor); 0 is off", low=0, high=3, bounds=(0, 1000)),),
)

MOMENTUM = 0.01  # the input range's moving average: lo <- lo + MOMENTUM * (min(x) - lo)


class FakeQuantWeight(nn.Module):
    """w -> w_q: symmetric int8 per output channel (dim 0)."""

    def forward(self, w: Tensor) -> Tensor:
        scale = (w.detach().abs().flatten(1).amax(1) / 127).clamp_min(1e-12).float()
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)


class FakeQuantInput(nn.Module):
    """x -> x_q: asymmetric uint8 per tensor over the moving range [lo, hi] (updated in training)."""

    lo: Tensor
    hi: Tensor
    seen: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float().clamp_max(0), x.detach().max().float().clamp_min(0)
                # the first batch sets the range, later ones move it (torch.where: no read-back)
                self.lo.copy_(torch.where(self.seen, self.lo + MOMENTUM * (lo - self.lo), lo))
                self.hi.copy_(torch.where(self.seen, self.hi + MOMENTUM * (hi - self.hi), hi))
                self.seen.fill_(True)
        scale = ((self.hi - self.lo) / 255).clamp_min(1e-8)
        zero = (-self.lo / scale).round().clamp(0, 255).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


_HOOKS = "_autotrick_qat_hook"


def start_qat(model: nn.Module) -> bool:
    """Fake-quantize the weight and the input of every conv and linear layer of `model` where it
    is not yet (again after pruning folded the weights' parametrization away); True if any was added."""
    added = False
    for module in model.modules():
        if not isinstance(module, WEIGHT_LAYERS):
            continue
        # Under a pruning mask (finetuning after pruning), torch's pruning computes `weight` from
        # weight_orig in a hook of its own: that layer's inputs are fake-quantized, not its weights.
        if not _weight_quantized(module) and not hasattr(module, "weight_orig"):
            parametrize.register_parametrization(module, "weight", FakeQuantWeight())
            added = True
        if not hasattr(module, _HOOKS):
            module.add_module("input_quant", FakeQuantInput().to(module.weight.device))
            handle: RemovableHandle = module.register_forward_pre_hook(
                lambda m, args: (m.input_quant(args[0]), *args[1:]))
            setattr(module, _HOOKS, handle)
            added = True
    return added


def _weight_quantized(module: nn.Module) -> bool:
    if not parametrize.is_parametrized(module, "weight"):
        return False
    chain = module.get_submodule("parametrizations.weight")  # torch types `module.parametrizations` Tensor | Module
    return any(isinstance(p, FakeQuantWeight) for p in chain.children())


def qat_active(model: nn.Module) -> bool:
    return any(hasattr(m, _HOOKS) for m in model.modules())


def stop_qat(model: nn.Module) -> bool:
    """Remove the input quantizers and fold the weights' fake quantization in (the weights stay on
    the int8 grid); True if there were any. The caller rebuilds an optimizer over the new weights."""
    found = False
    for module in model.modules():
        handle = getattr(module, _HOOKS, None)
        if handle is not None:
            handle.remove()
            delattr(module, _HOOKS)
            del module.input_quant
            found = True
        if _weight_quantized(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            found = True
    return found
