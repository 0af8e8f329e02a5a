"""Weight pruning (not trial early stopping): after training, zero the smallest-magnitude fraction
`ratio` of all conv and linear weights, globally, finetune with the mask held, then make it permanent.

mask_i = 0 for the k = round(ratio * n) weights w_i with the smallest |w_i| among all n conv and
linear weights of the model (one threshold for every layer), 1 otherwise. While pruned each layer
computes with w = w_orig * mask (torch.nn.utils.prune), so finetuning cannot revive a zero.
sparsity = zeros / total over the pruned weights; the run reports it and the non-zero parameter count.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from autotrick.params import Param, Trick, When
from autotrick.tricks.init import WEIGHT_LAYERS

PRUNE = Trick(
    name="prune",
    summary="global magnitude pruning of conv/linear weights to a ratio, then finetune epochs",
    params=(
        Param("ratio", "float", 0.0, "fraction of conv/linear weights set to zero; 0 is off",
              low=0.0, high=0.9),
        Param("finetune_epochs", "int", 1, "epochs trained after pruning, with the mask held",
              low=0, high=5, bounds=(0, 100), when=When("ratio", above=0.0)),
    ),
)


@dataclass(frozen=True)
class Sparsity:
    """sparsity: zeros / total over the prunable conv and linear weights; the counts are over all
    parameters."""

    sparsity: float
    nonzero_params: int
    total_params: int


def _prunable(model: nn.Module) -> list[nn.Module]:
    """The conv and linear layers of `model`, less the out_proj of nn.MultiheadAttention: attention
    reads out_proj.weight without calling out_proj, so the mask would not be re-applied."""
    attention = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS) and id(m) not in attention]


def prune_weights(model: nn.Module, *, ratio: float) -> None:
    """Mask the `ratio` fraction of conv/linear weights of smallest |w|, over the whole model at once.
    (torch's global_unstructured does the same but refuses channels_last weights.)"""
    if ratio == 0:
        return
    layers = _prunable(model)
    scores = torch.cat([layer.weight.detach().abs().reshape(-1) for layer in layers])
    keep = torch.ones_like(scores)
    keep[torch.topk(scores, round(ratio * scores.numel()), largest=False).indices] = 0.0
    for layer, mask in zip(layers, keep.split([layer.weight.numel() for layer in layers]), strict=True):
        prune.custom_from_mask(layer, "weight", mask.reshape(layer.weight.shape))


def make_pruning_permanent(model: nn.Module) -> None:
    """Fold every mask into its tensor (w = w_orig * mask) and drop the mask; no-op if unpruned."""
    for module in model.modules():
        pruned = [name.removesuffix("_mask") for name, _ in module.named_buffers(recurse=False)
                  if name.endswith("_mask")]
        for name in pruned:
            prune.remove(module, name)


# prune keeps a pruned `w` as `w_orig` and `w_mask`, and recomputes w = w_orig * w_mask only at the
# next forward: the two helpers below read what the forward pass will use.
def _weight_as_used(layer: nn.Module) -> Tensor:
    mask = getattr(layer, "weight_mask", None)
    return layer.weight if mask is None else layer.weight_orig * mask


def _params_as_used(model: nn.Module) -> Iterator[Tensor]:
    buffers = dict(model.named_buffers())
    for name, param in model.named_parameters():
        mask = buffers.get(name.removesuffix("_orig") + "_mask") if name.endswith("_orig") else None
        yield param if mask is None else param * mask


@torch.no_grad()
def measure_sparsity(model: nn.Module) -> Sparsity:
    """The share of zeros among the prunable weights, and the non-zero and total parameter counts."""
    weights = [_weight_as_used(layer) for layer in _prunable(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
    params = list(_params_as_used(model))
    return Sparsity(sparsity=zeros / total if total else 0.0,
                    nonzero_params=sum(int(torch.count_nonzero(p)) for p in params),
                    total_params=sum(p.numel() for p in params))
