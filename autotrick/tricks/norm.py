"""Normalization layer swap: replace every BatchNorm/GroupNorm/LayerNorm/InstanceNorm, in place,
anywhere in any nn.Module (torchvision models included), for 1d and 2d norms.

Every type computes y = (x - mean) / sqrt(var + eps) * gamma + beta (gamma, beta per channel);
they differ in what mean and var are taken over, for an (N, C, *spatial) input:
batch:    N and spatial, per channel (running averages at eval): BatchNorm1d/2d/3d(C).
batch_renorm: batch, corrected toward the running statistics (tricks/batch_renorm.py).
group:    C/G channels and spatial, per sample: GroupNorm(G, C); G must divide C, else the
          largest divisor of C below it.
layer:    C and spatial, per sample, i.e. over channels: GroupNorm(1, C) for conv feature maps,
          LayerNorm(C) for vectors. A LayerNorm keeps its normalized_shape; a BatchNorm1d takes
          GroupNorm(1, C), which is LayerNorm(C) on (N, C) and also accepts (N, C, L).
instance: spatial, per sample and channel: InstanceNorm1d/2d/3d(C, affine=True).
none:     y = x (nn.Identity).

A norm acts on dim 1 of (N, C, *spatial) (BatchNorm, GroupNorm, InstanceNorm, torchvision's
LayerNorm2d) or on the last dim(s) of (..., C) (LayerNorm: vectors, ViT tokens, ConvNeXt's
channels-last maps). A last-dim norm becomes batch or group by normalizing the rows of
x.reshape(-1, C): tokens and pixels count as samples.

instance falls back to layer where a norm may see (N, C) vectors (a LayerNorm, a BatchNorm1d): a
vector has no positions to normalize a channel over (y would be beta), and a swap cannot tell
vectors from tokens. It also needs more than one position at run time: torch raises for a 1x1 map
(ConvNeXt's head after pooling; a stride-32 CNN's last stage on 32x32 images).
GroupNorm and SyncBatchNorm carry no rank; they are taken to see 2d maps.
"""

import math
import sys
from dataclasses import dataclass
from itertools import chain

from torch import Tensor, nn

from autotrick.params import Param, Trick, When
from autotrick.tricks.batch_renorm import BATCH_RENORM

NORM_TYPES = ("keep", "batch", "group", "layer", "instance", "none", "batch_renorm")

NORM = Trick(
    name="norm",
    summary="swap every norm layer: batch | group (G groups) | layer | instance | none | batch_renorm",
    params=(
        Param("type", "choice", "keep", "norm layer to use everywhere; keep leaves the model's own",
              choices=NORM_TYPES),
        Param("groups", "choice", 8,
              "GroupNorm groups (largest divisor of the channels if it does not divide)",
              choices=(1, 2, 4, 8, 16, 32), when=When("type", ("group",))),
    ),
)

# The layers a swap replaces (LayerNorm2d is a LayerNorm).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)
# Spatial dims after C; 0 for a norm that may also see (N, C) vectors. Unlisted norms: 2.
_SPATIAL_DIMS: dict[type[nn.Module], int] = {
    nn.BatchNorm1d: 0, nn.InstanceNorm1d: 1, nn.BatchNorm3d: 3, nn.InstanceNorm3d: 3,
}
_BATCH: dict[int, type[nn.Module]] = {
    0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d,
}
_INSTANCE: dict[int, type[nn.Module]] = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class LastDimNorm(nn.Module):
    """A channel-first norm (BatchNorm1d, GroupNorm) applied over the last dim(s) of x: on the rows
    of x.reshape(-1, features), so that every token or pixel is a row."""

    def __init__(self, norm: nn.Module, features: int) -> None:
        super().__init__()
        self.norm = norm
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.reshape(-1, self.features)).reshape(x.shape)


@dataclass(frozen=True)
class _Site:
    """Where a norm acts: on `channels` at dim 1 followed by `spatial` dims, or, when `last_dims`
    is set, on the trailing `last_dims` of x (then `channels` is their product)."""

    channels: int
    spatial: int = 2
    last_dims: tuple[int, ...] | None = None


def _is_layer_norm_2d(module: nn.Module) -> bool:
    """torchvision's ConvNeXt LayerNorm2d; a model can only hold one if torchvision is imported,
    so this never imports it (that would cost every process ~2 s)."""
    convnext = sys.modules.get("torchvision.models.convnext")
    return convnext is not None and isinstance(module, convnext.LayerNorm2d)


def _site(module: nn.Module) -> _Site | None:
    """Where `module` normalizes; None if it is not a norm layer."""
    if _is_layer_norm_2d(module):  # a LayerNorm over the channels of (N, C, H, W)
        return _Site(module.normalized_shape[0])
    if isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        return _Site(math.prod(shape), spatial=0, last_dims=shape)
    if isinstance(module, nn.GroupNorm):
        return _Site(module.num_channels)
    if isinstance(module, NORM_LAYERS):
        spatial = next((d for cls, d in _SPATIAL_DIMS.items() if isinstance(module, cls)), 2)
        return _Site(module.num_features, spatial)
    return None


def num_groups(channels: int, groups: int) -> int:
    """`groups` if it divides `channels`, else the largest divisor of `channels` below it."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def _build(site: _Site, kind: str, groups: int, eps: float) -> nn.Module:
    """A fresh `kind` norm for `site` (see the module docstring for the choices)."""
    if kind == "none":
        return nn.Identity()
    if site.last_dims is not None and kind in ("layer", "instance"):
        return nn.LayerNorm(site.last_dims, eps=eps)
    c = site.channels
    if kind == "batch":
        norm = _BATCH[site.spatial](c, eps=eps)
    elif kind == "batch_renorm":
        norm = BATCH_RENORM[site.spatial](c, eps=eps)
    elif kind == "group":
        norm = nn.GroupNorm(num_groups(c, groups), c, eps=eps)
    elif kind == "layer" or site.spatial == 0:  # instance has no positions in (N, C): use layer
        norm = nn.GroupNorm(1, c, eps=eps)
    else:
        norm = _INSTANCE[site.spatial](c, eps=eps, affine=True)
    return norm if site.last_dims is None else LastDimNorm(norm, c)


def _replacement(module: nn.Module, kind: str, groups: int) -> nn.Module | None:
    """The `kind` norm to put in `module`'s place, on its device and dtype; None if it is not a norm."""
    site = _site(module)
    if site is None:
        return None
    new = _build(site, kind, groups, module.eps)
    like = next((t for t in chain(module.parameters(), module.buffers()) if t.is_floating_point()), None)
    return new if like is None else new.to(like.device, like.dtype)


def swap_norms(model: nn.Module, *, type: str, groups: int = 8) -> nn.Module:
    """Replace every norm layer of `model`, in place, by a `type` norm (one of NORM_TYPES).

    Returns `model`; or the new layer, when `model` is itself a norm layer.
    """
    if type not in NORM_TYPES:
        raise ValueError(f"unknown norm type {type!r}; expected one of {', '.join(NORM_TYPES)}")
    if type == "keep":
        return model
    replacement = _replacement(model, type, groups)
    if replacement is not None:
        return replacement
    for name, child in list(model.named_children()):
        new = swap_norms(child, type=type, groups=groups)
        if new is not child:
            setattr(model, name, new)
    return model
