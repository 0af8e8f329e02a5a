"""Weight normalization and spectral normalization of every conv and linear weight, through
torch.nn.utils.parametrizations.

weight_norm   (Salimans & Kingma, 2016): w = g * v / ||v||, the norm over each output channel;
              g and v are trained, starting at g = ||w||, v = w (the model starts unchanged).
spectral_norm (Miyato et al., 2018): w = W / sigma(W), sigma the largest singular value of W
              flattened to (out, in * kernel), estimated by one power iteration per training
              forward (after 15 when it is registered); the model starts scaled down.
A layer with an output channel of zero weights (ViT's head starts all zero) is left plain: its
norm, and so w, would be 0 / 0.
Applied for training only: `remove_reparametrizations` folds w back into a plain weight
(torch.nn.utils.parametrize.remove_parametrizations, leave_parametrized=True), so the trained
model is saved, registered and exported in plain form.
"""

from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from autotrick.params import Param, Trick
from autotrick.tricks.init import WEIGHT_LAYERS

REPARAM_TYPES = ("none", "weight_norm", "spectral_norm")

REPARAM = Trick(
    name="reparam",
    summary="conv/linear weights as w = g v / ||v|| (weight_norm) or W / sigma_max(W) (spectral_norm)",
    params=(Param("type", "choice", "none", "reparametrization of every conv and linear weight",
                  choices=REPARAM_TYPES),),
)


def reparametrize(model: nn.Module, *, type: str) -> nn.Module:
    """Register `type` on the weight of every conv and linear layer of `model`, in place; returns it."""
    if type not in REPARAM_TYPES:
        raise ValueError(f"unknown reparam type {type!r}; expected one of {', '.join(REPARAM_TYPES)}")
    if type == "none":
        return model
    apply = parametrizations.weight_norm if type == "weight_norm" else parametrizations.spectral_norm
    for module in list(model.modules()):
        if (isinstance(module, WEIGHT_LAYERS) and not parametrize.is_parametrized(module, "weight")
                and _no_zero_channel(module.weight)):
            apply(module)
    return model


def _no_zero_channel(weight: Tensor) -> bool:
    return weight.numel() > 0 and bool(weight.detach().flatten(1).norm(dim=1).gt(0).all())


def remove_reparametrizations(model: nn.Module) -> bool:
    """Fold every parametrized weight into a plain one, in place; True if there was any.
    (weight_norm's weight becomes a new Parameter: an optimizer over the old ones must be rebuilt.)"""
    found = [m for m in model.modules() if parametrize.is_parametrized(m)]
    for module in found:
        for name, _ in list(module.get_submodule("parametrizations").named_children()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return bool(found)
