"""Weight pruning (not trial early stopping): zero the smallest-magnitude fraction `ratio` of all
conv and linear weights, globally, after training (oneshot) or during it (gradual), finetune with
the mask held, then make it permanent; or remove whole channels (structured).

mask_i = 0 for the k = round(ratio * n) weights w_i with the smallest |w_i| among all n conv and
linear weights of the model (one threshold for every layer), 1 otherwise. While pruned each layer
computes with w = w_orig * mask (torch.nn.utils.prune), so finetuning cannot revive a zero.
gradual (Zhu & Gupta, 2017): at the start of epoch t the sparsity is
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,   s_i = 0, s_f = ratio, dt = 1 epoch,
    t0 = round(gradual_start * epochs), t0 + n dt = round(gradual_end * epochs),
held at s_f from epoch t0 + n dt on: pruning is fast at first and slows as the target nears.
structured (Li et al., 2017): each conv and linear layer (the classifier excepted) loses the
`ratio` fraction of its output channels with the smallest L1 norm, and the layers that read them
lose those inputs: the model gets smaller and faster, not only sparse. Torch-Pruning's dependency
graph finds what reads a channel; channels coupled by a residual add go together (their L1 norms
summed). The number removed depends only on the ratio, so a saved model's shape can be rebuilt.
After training `keep_pruned` keeps the zeros through any later optimizer steps (a fine-tuning of
one's own): an optimizer step hook re-applies the masks.
sparsity = zeros / total over the pruned weights; the run reports it, the parameter count (non-zero
and total) and the measured inference time, before and after.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.utils.hooks import RemovableHandle

from autotrick.params import Param, Trick, When
from autotrick.tricks.init import WEIGHT_LAYERS, WeightLayer

_GRADUAL = When("schedule", ("gradual",))

PRUNE = Trick(
    name="prune",
    summary="magnitude pruning of conv/linear weights to a ratio (oneshot or gradual), or whole channels removed",
    params=(
        Param("ratio", "float", 0.0, "fraction of conv/linear weights (structured: channels) removed; 0 is off",
              low=0.0, high=0.9),
        Param("finetune_epochs", "int", 1, "epochs trained after pruning, with the mask held",
              low=0, high=5, bounds=(0, 100), when=When("ratio", above=0.0)),
        Param("structured", "bool", False, "remove whole channels of least L1 norm: a smaller, faster model",
              when=When("ratio", above=0.0)),
        Param("schedule", "choice", "oneshot", "oneshot: after training; gradual: the cubic ramp during training",
              choices=("oneshot", "gradual"), when=When("structured", (False,))),
        Param("gradual_start", "float", 0.0, "gradual: the ramp starts at this fraction of the epochs",
              low=0.0, high=0.5, bounds=(0.0, 1.0), when=_GRADUAL),
        Param("gradual_end", "float", 0.75, "gradual: the ratio is reached at this fraction of the epochs",
              low=0.5, high=1.0, bounds=(0.0, 1.0), when=_GRADUAL),
    ),
)


@dataclass(frozen=True)
class Sparsity:
    """sparsity: zeros / total over the prunable conv and linear weights; the counts are over all
    parameters."""

    sparsity: float
    nonzero_params: int
    total_params: int


def _prunable(model: nn.Module) -> list[WeightLayer]:
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


def gradual_sparsity(epoch: int, *, epochs: int, ratio: float, gradual_start: float = 0.0,
                     gradual_end: float = 0.75) -> float:
    """s_t of the module docstring at the start of epoch `epoch` (0-based) of `epochs`."""
    t0 = round(gradual_start * epochs)
    span = max(1, round(gradual_end * epochs) - t0)  # n dt: at least one epoch
    progress = min(max((epoch - t0) / span, 0.0), 1.0)
    return ratio + (0.0 - ratio) * (1 - progress) ** 3


def prune_channels(model: nn.Module, *, ratio: float, example_inputs: Tensor,
                   keep: list[nn.Module]) -> None:
    """Remove the `ratio` fraction of output channels of least L1 norm from every conv and linear
    layer but those in `keep` (the classifier), and their inputs downstream, in place."""
    import warnings

    import torch_pruning as tp  # imported on first use: only structured pruning needs it

    channels_last = any(isinstance(m, nn.Conv2d) and m.weight.is_contiguous(memory_format=torch.channels_last)
                        and not m.weight.is_contiguous() for m in model.modules())
    attention = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    was_training = model.training
    model.eval()  # the graph is traced with a forward pass: no running statistics updated by it
    with warnings.catch_warnings():  # it says how it treats free parameters (class tokens, layer scales)
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=keep, num_heads=attention)
        pruner.step()
    model.train(was_training)
    if channels_last:
        model.to(memory_format=torch.channels_last)


def pruning_masks(model: nn.Module) -> dict[str, Tensor]:
    """w != 0 for the weight of every conv and linear layer that has a zero, by the layer's name."""
    return {name: layer.weight != 0 for name, layer in model.named_modules()
            if isinstance(layer, WEIGHT_LAYERS) and not bool((layer.weight != 0).all())}


def keep_pruned(model: nn.Module, optimizer: torch.optim.Optimizer,
                masks: dict[str, Tensor] | None = None) -> RemovableHandle:
    """Keep the pruned weights of `model` at zero through every later step of `optimizer`, which
    would otherwise revive them all (momentum and weight decay move every weight): each step is
    followed by w *= mask. `masks` defaults to `pruning_masks(model)` taken now. Returns the
    hook's handle; `.remove()` lets the zeros go."""
    if masks is None:
        masks = pruning_masks(model)
    weights = [(_weight(model.get_submodule(name)), mask) for name, mask in masks.items()]

    @torch.no_grad()
    def reapply(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for weight, mask in weights:
            weight.mul_(mask)

    return optimizer.register_step_post_hook(reapply)


@torch.no_grad()
def inference_ms(model: nn.Module, x: Tensor, repeats: int = 5) -> float:
    """The median wall time of a forward pass over `x`, in milliseconds, in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():  # inference: no graph kept for a backward pass
        for i in range(repeats + 1):  # the first is a warm-up: first-call allocations and kernel choices
            started = time.perf_counter()
            model(x)
            if x.is_cuda:  # the GPU's queue, drained before the clock stops
                torch.cuda.synchronize(x.device)
            if i:
                times.append(time.perf_counter() - started)
    model.train(was_training)
    return 1000 * sorted(times)[len(times) // 2]


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
    return _weight(layer) if mask is None else layer.get_parameter("weight_orig") * mask


def _weight(layer: nn.Module) -> Tensor:
    """The layer's weight as its forward reads it: a Parameter, or a pruned weight's w_orig * mask."""
    weight = getattr(layer, "weight")  # noqa: B009  (a plain attribute while pruning holds a mask)
    assert isinstance(weight, Tensor)
    return weight


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
