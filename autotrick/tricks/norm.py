"""Normalization layer swap: replace every norm layer, in place, anywhere in any nn.Module
(torchvision and timm models included), by the norm a recipe asks for.

Every type computes y = (x - mean) / sqrt(var + eps) * gamma + beta (gamma, beta per channel).
Seen as (N, C, *positions) (a channels-last input (N, *positions, C) is read that way too), they
differ in what mean and var are taken over:
batch:    N and the positions, per channel (running averages at eval): BatchNorm1d/2d/3d(C); on
          channels-last input, BatchNorm1d over (N, C, P).
batch_renorm: batch, corrected toward the running statistics (tricks/batch_renorm.py), where
          batch would go.
group:    C/G channels and the positions, per sample: GroupNorm(G, C); G must divide C, else the
          largest divisor of C below it.
layer:    a per-position norm (LayerNorm, RMSNorm, ConvNeXt's channel-first LayerNorm2d) becomes
          LayerNorm over the same channels at each position; any other norm of a map becomes
          GroupNorm(1, C), the layer norm of conv nets (over C and the positions, per sample);
          of (N, C) vectors, LayerNorm(C).
instance: the positions, per sample and channel: InstanceNorm1d/2d/3d(C, affine=True). Undefined
          where a norm sees a single position, (N, C) vectors or a 1x1 map after pooling: the
          original norm stays there, and the swap says so.
none:     y = x (NoNorm: nn.Identity, returning a copy: see the class).

What the swap recognizes, by structure rather than by name (see RECOGNIZED):
- torch's BatchNorm*/SyncBatchNorm, GroupNorm, InstanceNorm*, LayerNorm, RMSNorm and their
  subclasses: torchvision's LayerNorm2d, timm's GroupNorm1, LayerNorm2d, and timm's fused
  norm + activation layers (BatchNormAct2d, GroupNormAct, LayerNormAct2d, ...), which hold the
  activation (`act`) and a drop layer (`drop`) as children: those are kept after the new norm;
- norms that subclass nothing of torch's: anything with `normalized_shape` and `eps` (timm's
  RmsNorm, RmsNorm2d, SimpleNorm and their Act and Fp32 variants), and frozen batch norms
  (running_mean and running_var buffers and `eps`: torchvision's and timm's FrozenBatchNorm2d).
A norm with a `normalized_shape` acts on the trailing dims (LayerNorm) or on dim 1 of
(N, C, H, W) (LayerNorm2d, RmsNorm2d): torch's own forward says the first; otherwise the layer
is called once on a small channels-first and a small channels-last tensor to see which it takes.

With an example batch (the trainer always gives one), one traced forward pass (see trace.py)
says what each norm really sees: its rank, (N, C) vectors or tokens, a 1x1 map. Without one,
GroupNorm and SyncBatchNorm are taken to see 2d maps, and instance keeps every norm that may see
vectors (BatchNorm1d, and the trailing-dim norms).

A norm module shared by several blocks is replaced by one new module, still shared. Layers that
look like norms but are none of the above (EvoNorm, FilterResponseNorm, GlobalResponseNorm,
LocalResponseNorm) are left as they are, and the swap says so. What the swap could not do as
asked is said in one line each, as a TrickNote warning (the trainer prints them).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from itertools import chain

import torch
from torch import Tensor, nn

from autotrick.errors import TrickNote
from autotrick.params import Param, Trick, When
from autotrick.tricks.batch_renorm import BATCH_RENORM
from autotrick.tricks.head import replace_modules
from autotrick.tricks.norm_layers import NORM_LAYERS, has_normalized_shape, is_norm  # noqa: F401  (re-exported)

NORM_TYPES = ("keep", "batch", "group", "layer", "instance", "none", "batch_renorm")
RECOGNIZED = ("BatchNorm1d/2d/3d, SyncBatchNorm, GroupNorm, InstanceNorm1d/2d/3d, LayerNorm, RMSNorm and "
              "their subclasses (torchvision LayerNorm2d; timm LayerNorm2d, GroupNorm1 and the fused "
              "norm-activation layers BatchNormAct2d, GroupNormAct, LayerNormAct2d, ..., whose activation "
              "is kept), timm RmsNorm/RmsNorm2d/SimpleNorm, frozen batch norms")

NORM = Trick(
    name="norm",
    summary="swap every norm layer: batch | group (G groups) | layer | instance | none | batch_renorm",
    params=(
        Param("type", "choice", "keep",
              f"norm layer to use everywhere; keep leaves the model's own. Swaps {RECOGNIZED}", choices=NORM_TYPES),
        Param("groups", "choice", 8,
              "GroupNorm groups (largest divisor of the channels if it does not divide)",
              choices=(1, 2, 4, 8, 16, 32), when=When("type", ("group",))),
    ),
)

# Positions after C that each channel-first class implies; None: it may see (N, C) vectors or
# (N, C, L); GroupNorm and SyncBatchNorm carry no rank.
_POSITIONS: dict[type[nn.Module], int | None] = {
    nn.BatchNorm1d: None, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3,
    nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3,
}
_BATCH_AND_INSTANCE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                       nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_BATCH: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE: dict[int, type[nn.Module]] = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_DEFAULT_EPS = 1e-5


class ChannelsLastNorm(nn.Module):
    """A channel-first norm applied to channels-last input (N, *positions, features), read as
    (N, features, P) with the positions flattened: tokens and pixels are the positions."""

    def __init__(self, norm: nn.Module, features: int) -> None:
        super().__init__()
        self.norm = norm
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(x.shape[0], -1, self.features).transpose(1, 2)
        return self.norm(rows).transpose(1, 2).reshape(x.shape)


class ChannelsFirstNorm(nn.Module):
    """A trailing-dim norm (LayerNorm(C)) applied to the channels of (N, C, *positions)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class NoNorm(nn.Identity):
    """y = x, as a new tensor: a norm never returns its input, and a model may change a norm's output
    in place (an in-place activation) while it still holds the input (a skip connection)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clone()


class NormAct(nn.Module):
    """A new norm followed by what a fused norm-activation layer applied after its own: act(drop(norm(x)))."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(self.norm(x)))


@dataclass(frozen=True)
class Site:
    """Where a norm acts: on `channels` at dim 1 of (N, C, *positions) ("first"), or on its
    trailing `last_dims` ("last"; `channels` is their product). `positions`: how many position
    dims it sees (None: unknown). `per_position`: it normalizes each position over its channels
    (LayerNorm, RMSNorm). `single`: the example showed it a single position (vectors, 1x1 map)."""

    channels: int
    layout: str
    positions: int | None
    per_position: bool = False
    last_dims: tuple[int, ...] = ()
    single: bool = False


def _like(module: nn.Module) -> Tensor | None:
    return next((t for t in chain(module.parameters(), module.buffers()) if t.is_floating_point()), None)


def _accepts(module: nn.Module, shape: tuple[int, ...]) -> bool:
    like = _like(module)
    x = torch.randn(shape, device=like.device if like is not None else None,
                    dtype=like.dtype if like is not None else None)
    try:
        with torch.no_grad():
            return tuple(module(x).shape) == shape
    except Exception:  # the wrong layout for this norm
        return False


def _shape_layout(module: nn.Module, channels: int) -> str | None:
    """Where a norm with a 1-dim normalized_shape acts: "last" with torch's own forward; else the
    one layout it accepts ("first": (N, C, H, W), "last": (N, L, C)), tried on small tensors whose
    other dims differ from `channels`; None if it takes both or neither."""
    if type(module).forward in (nn.LayerNorm.forward, nn.RMSNorm.forward):
        return "last"
    a, b = _two_sizes(channels)
    first, last = _accepts(module, (2, channels, a, b)), _accepts(module, (2, a, channels))
    return "first" if first and not last else "last" if last and not first else None


def _two_sizes(channels: int) -> tuple[int, int]:
    sizes = [s for s in (3, 5, 7) if s != channels]
    return sizes[0], sizes[1]


def site_of(module: nn.Module) -> Site | None:
    """Where `module` normalizes (from its class and structure); None if it is not a norm the
    swap recognizes or its layout cannot be told."""
    if not is_norm(module):
        return None
    if isinstance(module, nn.GroupNorm):
        return Site(module.num_channels, "first", 2)
    if isinstance(module, _BATCH_AND_INSTANCE):
        positions = next((p for cls, p in _POSITIONS.items() if isinstance(module, cls)), 2)
        return Site(module.num_features, "first", positions)
    if has_normalized_shape(module):
        shape = tuple(int(d) for d in getattr(module, "normalized_shape"))  # noqa: B009  (duck-typed norms)
        features = math.prod(shape)
        layout = _shape_layout(module, features) if len(shape) == 1 else "last"
        if layout is None:
            return None
        if layout == "first":
            return Site(features, "first", 2, per_position=True)
        return Site(features, "last", None, per_position=True, last_dims=shape)
    return Site(module.get_buffer("running_mean").numel(), "first", 2)  # a frozen batch norm: (N, C, H, W)


def _seen(site: Site, shapes: list[tuple[int, ...]]) -> Site | None:
    """`site` with what the example showed: its positions and whether it saw a single one; None if
    an input does not fit the site (the layout was misread)."""
    positions: set[int] = set()
    single = False
    for shape in shapes:
        if site.layout == "first":
            if len(shape) < 2 or shape[1] != site.channels:
                return None
            spots = shape[2:]
        else:
            k = len(site.last_dims)
            if len(shape) < k + 1 or tuple(shape[-k:]) != site.last_dims:
                return None
            spots = shape[1:-k]
        positions.add(len(spots))
        single = single or math.prod(spots) == 1
    if len(positions) != 1:  # called on inputs of different ranks: keep what the class said
        return replace(site, single=single)
    return replace(site, positions=positions.pop(), single=single)


def num_groups(channels: int, groups: int) -> int:
    """`groups` if it divides `channels`, else the largest divisor of `channels` below it."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def _build(site: Site, kind: str, groups: int, eps: float) -> nn.Module:
    """A fresh `kind` norm for `site` (see the module docstring)."""
    c = site.channels
    if kind == "none":
        return NoNorm()
    if site.layout == "last":
        if kind == "layer":
            return nn.LayerNorm(site.last_dims, eps=eps)
        inner = {"batch": lambda: nn.BatchNorm1d(c, eps=eps),
                 "batch_renorm": lambda: BATCH_RENORM[1](c, eps=eps),
                 "group": lambda: nn.GroupNorm(num_groups(c, groups), c, eps=eps),
                 "instance": lambda: nn.InstanceNorm1d(c, eps=eps, affine=True)}[kind]()
        return ChannelsLastNorm(inner, c)
    positions = site.positions
    if kind == "batch":  # BatchNorm1d takes both (N, C) and (N, C, L)
        return _BATCH[positions or 1](c, eps=eps)
    if kind == "batch_renorm":
        return BATCH_RENORM[positions or 1](c, eps=eps)
    if kind == "group":
        return nn.GroupNorm(num_groups(c, groups), c, eps=eps)
    if kind == "layer":
        return ChannelsFirstNorm(nn.LayerNorm(c, eps=eps)) if site.per_position else nn.GroupNorm(1, c, eps=eps)
    return _INSTANCE[positions or 2](c, eps=eps, affine=True)


def instance_undefined(site: Site) -> bool:
    """Instance norm needs more than one position; unknown counts as maybe vectors where the
    class allows them (BatchNorm1d, trailing-dim norms)."""
    return site.single or site.positions == 0 or site.positions is None


def replacement(module: nn.Module, site: Site, kind: str, groups: int) -> nn.Module:
    """The `kind` norm to put in `module`'s place, on its device and dtype, with a fused layer's
    drop and activation after it."""
    eps = getattr(module, "eps", None)
    new = _build(site, kind, groups, float(eps) if isinstance(eps, float | int) else _DEFAULT_EPS)
    _keep_batch_statistics(module, new)
    like = _like(module)
    if like is not None:
        new = new.to(like.device, like.dtype)
    extras = dict(module.named_children())
    if extras:
        new = NormAct(new, extras.get("drop", nn.Identity()), extras.get("act", nn.Identity()))
    return new


def _keep_batch_statistics(old: nn.Module, new: nn.Module) -> None:
    """Batch renorm is batch norm with a correction: one that replaces a batch norm of the same
    channels starts from its affine weights and running statistics (pretrained ones, fine-tuning)."""
    batch_norms = tuple(_BATCH.values())
    if isinstance(old, batch_norms) and isinstance(new, batch_norms) and old.num_features == new.num_features:
        kept = old.state_dict()
        with torch.no_grad():
            for name, tensor in new.state_dict().items():
                source = kept.get(name)
                if source is not None and source.shape == tensor.shape and not source.is_meta:
                    tensor.copy_(source)


def _describe(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(p or "(the model)" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _look_alikes(model: nn.Module) -> list[str]:
    """Class names of layers that look like norms (a "Norm" in the name and own parameters) but
    are none the swap recognizes: only ever said, never acted on."""
    names = {type(m).__name__ for m in model.modules()
             if "Norm" in type(m).__name__ and not is_norm(m) and any(True for _ in m.parameters(recurse=False))}
    return sorted(names)


def norm_sites(model: nn.Module, example: Tensor | None = None) -> dict[nn.Module, Site | None]:
    """Every norm layer of `model` the swap recognizes, once each, and where it acts (None: its
    layout cannot be told, or what the example showed it does not fit); `example`: see swap_norms."""
    shapes: dict[nn.Module, list[tuple[int, ...]]] = {}
    if example is not None:
        from autotrick.tricks.trace import trace

        for call in trace(model, example).calls:
            if call.input_shapes:
                shapes.setdefault(call.module, []).append(call.input_shapes[0])
    sites: dict[nn.Module, Site | None] = {}
    for module in model.modules():
        if is_norm(module):
            site = site_of(module)
            sites[module] = _seen(site, shapes[module]) if site is not None and module in shapes else site
    return sites


def swap_norms(model: nn.Module, example: Tensor | None = None, *, type: str, groups: int = 8) -> nn.Module:
    """Replace every norm layer of `model`, in place, by a `type` norm (one of NORM_TYPES).

    `example`, a batch the model takes, lets one traced forward pass say what each norm sees
    (module docstring). Returns `model`; or the new layer, when `model` is itself a norm layer.
    """
    if type not in NORM_TYPES:
        raise ValueError(f"unknown norm type {type!r}; expected one of {', '.join(NORM_TYPES)}")
    if type == "keep":
        return model
    paths: dict[nn.Module, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(module, []).append(path)
    new_for: dict[nn.Module, nn.Module] = {}
    kept_single, unreadable = [], []
    for module, site in norm_sites(model, example).items():
        if site is None:
            unreadable += paths[module]
        elif type == "instance" and instance_undefined(site):
            kept_single += paths[module]
        else:
            new_for[module] = replacement(module, site, type, groups)
    _note_kept(type, kept_single, unreadable, _look_alikes(model), example is not None)
    return replace_modules(model, new_for)  # a shared norm stays shared: every path gets the same new one


def _note_kept(kind: str, single: list[str], unreadable: list[str], look_alikes: list[str], traced: bool) -> None:
    if single:
        why = "it sees a single position (vectors or a 1x1 map)" if traced else \
            "it may see (N, C) vectors (no example batch to tell)"
        warnings.warn(f"norm.type={kind}: kept the model's own norm at {_describe(single)}: instance norm is "
                      f"undefined where {why}", TrickNote, stacklevel=3)
    if unreadable:
        warnings.warn(f"norm.type={kind}: kept {_describe(unreadable)}: cannot tell which dimension it normalizes",
                      TrickNote, stacklevel=3)
    if look_alikes:
        warnings.warn(f"norm.type={kind}: left {', '.join(look_alikes)} as they are: not norm layers the swap "
                      "recognizes", TrickNote, stacklevel=3)
