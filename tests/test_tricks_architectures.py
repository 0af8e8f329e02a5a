"""Every model-side trick on architectures nobody here wrote: torchvision's classification zoo and
a spread of timm families, built without weights, as a new user would try them.

The coverage is split so that the module finishes well inside CI's time on a 2-core CPU:

- All 80 torchvision classifiers, built on the meta device (no memory, no arithmetic: vit_h_14
  or regnet_y_128gf cost seconds and gigabytes to build for real), structurally: every norm layer
  is recognized and fits what a traced forward pass shows it, each norm type's new layer for
  every site takes what the old one saw, the final classifier is found, and one whole swap per
  model (the type taken in turn) runs a forward pass (`test_structure_on_every_torchvision_model`).
- One representative of each torchvision family, and one timm model for each norm or head design
  timm has that the others lack (fused norm + activation layers with BatchNorm, GroupNorm,
  LayerNorm and RmsNorm inside, EvoNorm, channel-first LayerNorm2d, GroupNorm(1, C) as a layer
  norm, RmsNorm2d, timm's RmsNorm on tokens, channels-last maps, BatchNorm1d on flattened tokens,
  distilled two-head ViTs, norm-MLP heads, blocks without a skip), built for real at 32x32 (or
  the model's minimum) and trained two steps on 2 images. The torchvision representative is the
  family's smallest builder where a CPU test affords it (resnet18, mobilenet_v3_small,
  mnasnet0_5, shufflenet_v2_x0_5, squeezenet1_1, googlenet, inception_v3), else the family's own
  classes at a small width and depth (ConvNeXt, DenseNet, EfficientNet and EfficientNetV2,
  MaxViT, RegNet, Swin and SwinV2, ViT: their smallest builders take 10-150 s a case here).
  AlexNet and VGG, whose fixed 4096-wide heads make 57M and 133M parameters, have the structural
  sweep and the dropout-placement test (tests/test_tricks_dropout.py); their norms are plain
  BatchNorm2d in a Sequential, as in many models here. Eight cases apply one value of every
  model-side trick each, as `prepare_model` does, so that together they cover each norm type,
  each initializer, dropout, pruning, and all of them at once (the heaviest models run two), and
  assert on each effect: every swapped site computes the reference norm of its own input over
  the right dimensions, no activation function is lost, the initializer's formula holds,
  zero_last_norm zeroes one norm per residual block (none in models without skips), a Dropout
  with p feeds every final classifier, pruning reaches its ratio, and the model check
  (diagnose.py) is silent except where the damage is real, named in ARCHS.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from autotrick.apply import prepare_model
from autotrick.diagnose import check_model, count_activations
from autotrick.errors import TrickNote
from autotrick.params import Value
from autotrick.tricks.dropout import DROPOUT_LAYERS, classifiers
from autotrick.tricks.head import final_layers
from autotrick.tricks.init import SCHEMES, WEIGHT_LAYERS
from autotrick.tricks.norm import (
    NORM_TYPES,
    ChannelsFirstNorm,
    ChannelsLastNorm,
    NormAct,
    instance_undefined,
    is_norm,
    norm_sites,
    replacement,
    swap_norms,
)
from autotrick.tricks.pruning import measure_sparsity, prune_weights
from autotrick.tricks.trace import trace


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, two OpenMP threads spin-waiting on a busy core
    make a small model's training step 5-10x slower (0.2 s against 1.3-1.8 s, resnet18 at 32x32)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# --- the models --------------------------------------------------------------------------------


def torchvision_kwargs(name: str) -> tuple[dict[str, Any], int]:
    """Builder arguments and the smallest square input each torchvision model takes (models.py)."""
    if name.startswith("vit_"):
        size = 28 if name == "vit_h_14" else 32
        return {"image_size": size}, size
    if name.startswith("maxvit_"):
        return {"input_size": (224, 224)}, 224
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}, 75 if name == "inception_v3" else 32
    return {}, 64 if name == "alexnet" else 32


def build_torchvision(name: str) -> nn.Module:
    kwargs, _ = torchvision_kwargs(name)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


def build_timm(name: str) -> nn.Module:
    pytest.importorskip("timm")
    from autotrick.models import build_model

    return build_model(f"timm:{name}", num_classes=10, in_channels=3, image_size=(32, 32))


def small_torchvision(family: str) -> nn.Module:
    """The family's own classes, narrow and shallow: what its smallest builder makes, at a size a
    CPU test affords (convnext_tiny, swin_t, vit_b_32, maxvit_t take tens of seconds per case)."""
    from torchvision.models import (
        convnext,
        densenet,
        efficientnet,
        maxvit,
        regnet,
        swin_transformer,
        vision_transformer,
    )

    if family == "convnext":
        return convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 2), convnext.CNBlockConfig(32, None, 2)],
                                 stochastic_depth_prob=0.1, num_classes=10)
    if family in ("swin", "swin_v2"):
        v2 = {"block": swin_transformer.SwinTransformerBlockV2, "downsample_layer": swin_transformer.PatchMergingV2}
        return swin_transformer.SwinTransformer([4, 4], 16, [2, 2], [1, 2], [4, 4], stochastic_depth_prob=0.1,
                                                num_classes=10, **(v2 if family == "swin_v2" else {}))
    if family == "vit":
        return vision_transformer.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                                                    num_classes=10)
    if family == "maxvit":
        return maxvit.MaxVit((32, 32), 8, 2, [16, 32], [1, 1], head_dim=8, stochastic_depth_prob=0.1,
                             num_classes=10)
    if family == "efficientnet":
        config = [efficientnet.MBConvConfig(1, 3, 1, 16, 8, 1), efficientnet.MBConvConfig(4, 3, 2, 8, 16, 2)]
        return efficientnet.EfficientNet(config, dropout=0.2, num_classes=10)
    if family == "efficientnet_v2":
        config = [efficientnet.FusedMBConvConfig(1, 3, 1, 16, 16, 2), efficientnet.MBConvConfig(4, 3, 2, 16, 24, 2)]
        return efficientnet.EfficientNet(config, dropout=0.2, num_classes=10, last_channel=64,
                                         norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3))
    if family == "regnet":
        params = regnet.BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
        return regnet.RegNet(params, num_classes=10)
    assert family == "densenet"
    return densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)


@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    size: int = 32
    zeroed: int | None = None  # norms zero_last_norm must zero: one per residual block; None: some
    cases: tuple[int, ...] = tuple(range(8))  # which of CASES run (the heaviest models run a few)
    damaged: frozenset[tuple[str, str]] = frozenset()  # (norm, init scheme) the model check must flag
    diverges: frozenset[str] = frozenset()  # norm types after which a training step may be non-finite


# What the model check must flag, each for a reason it names: norm-free conv nets do not carry a
# signal through trunc_normal's std 0.02 (ReLU nets need sqrt(2 / fan_in)); instance norm right
# before global average pooling leaves every channel's mean, hence the pooled features, at beta
# for every image (Swin, MobileViT-v2); without norms, MobileViT-v2's activations overflow.
VANISHES = frozenset({("keep", "trunc_normal"), ("instance", "trunc_normal")})
INSTANCE_BEFORE_POOLING = frozenset({("instance", "trunc_normal")})
ARCHS: dict[str, Arch] = {
    "tv-convnext": Arch(lambda: small_torchvision("convnext"), zeroed=4),
    "tv-densenet": Arch(lambda: small_torchvision("densenet"), zeroed=0),
    "tv-efficientnet": Arch(lambda: small_torchvision("efficientnet"), zeroed=1),
    "tv-efficientnet_v2": Arch(lambda: small_torchvision("efficientnet_v2"), zeroed=3),
    "tv-googlenet": Arch(lambda: build_torchvision("googlenet"), zeroed=0),
    "tv-inception_v3": Arch(lambda: build_torchvision("inception_v3"), 75, 0, (0, 6)),
    "tv-maxvit": Arch(lambda: small_torchvision("maxvit"), zeroed=9),
    "tv-mnasnet0_5": Arch(lambda: build_torchvision("mnasnet0_5"), zeroed=10),
    "tv-mobilenet_v3_small": Arch(lambda: build_torchvision("mobilenet_v3_small"), zeroed=6),
    "tv-regnet": Arch(lambda: small_torchvision("regnet"), zeroed=4),
    "tv-resnet18": Arch(lambda: build_torchvision("resnet18"), zeroed=8),
    "tv-shufflenet_v2_x0_5": Arch(lambda: build_torchvision("shufflenet_v2_x0_5"), zeroed=0),
    "tv-squeezenet1_1": Arch(lambda: build_torchvision("squeezenet1_1"), zeroed=0, damaged=VANISHES),
    "tv-swin": Arch(lambda: small_torchvision("swin"), zeroed=8, damaged=INSTANCE_BEFORE_POOLING),
    "tv-swin_v2": Arch(lambda: small_torchvision("swin_v2"), zeroed=8, damaged=INSTANCE_BEFORE_POOLING),
    "tv-vit": Arch(lambda: small_torchvision("vit")),
    # timm: one model per norm or head design the torchvision ones lack. A ViT reading its class
    # token zeroes a number of branches that depends on the norm type (see init.py): no count.
    "timm-test_resnet": Arch(lambda: build_timm("test_resnet"), zeroed=4),  # BatchNorm2d, functional dropout
    "timm-test_efficientnet": Arch(lambda: build_timm("test_efficientnet"), zeroed=0),  # BatchNormAct2d, no skips
    "timm-test_efficientnet_gn": Arch(lambda: build_timm("test_efficientnet_gn"), zeroed=0),  # GroupNormAct
    "timm-test_efficientnet_ln": Arch(lambda: build_timm("test_efficientnet_ln"), zeroed=0),  # LayerNormAct2d
    "timm-test_efficientnet_evos": Arch(lambda: build_timm("test_efficientnet_evos"), zeroed=0),  # EvoNorm: left
    "timm-regnetx_002": Arch(lambda: build_timm("regnetx_002"), zeroed=13),  # ConvNormAct, conv + norm shortcuts
    "timm-test_convnext": Arch(lambda: build_timm("test_convnext"), zeroed=9),  # LayerNorm2d, a norm on 1x1 maps
    "timm-convnext_atto_rms": Arch(lambda: build_timm("convnext_atto_rms"), zeroed=12),  # RmsNorm2d: no torch base
    "timm-poolformer_s12": Arch(lambda: build_timm("poolformer_s12"), zeroed=24, cases=(0, 2, 3, 6)),  # GroupNorm1
    "timm-test_vit": Arch(lambda: build_timm("test_vit")),  # token LayerNorm, head_drop + head
    "timm-test_vit4": Arch(lambda: build_timm("test_vit4"), zeroed=18),  # timm's RmsNorm on tokens
    "timm-deit_tiny_distilled": Arch(lambda: build_timm("deit_tiny_distilled_patch16_224"), cases=(0, 6)),  # 2 heads
    "timm-mobilevitv2_050": Arch(lambda: build_timm("mobilevitv2_050"), zeroed=19,  # GroupNorm1, blocks without skip
                                 damaged=INSTANCE_BEFORE_POOLING | {("none", "kaiming_normal")}, diverges={"none"}),
    "timm-test_mambaout": Arch(lambda: build_timm("test_mambaout"), zeroed=6),  # channels-last maps, ClNormMlp head
    "timm-levit_128s": Arch(lambda: build_timm("levit_128s"), zeroed=20, cases=(0, 3, 6),  # BatchNorm1d on tokens,
                            diverges={"none"}),                                            # NormLinear heads
    "timm-test_maxvit": Arch(lambda: build_timm("test_maxvit"), diverges={"none"}),  # BatchNormAct2d, LayerNorm2d
}


@functools.cache
def pristine(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return ARCHS[arch].build()


@functools.cache
def pristine_activations(arch: str) -> int:
    return count_activations(pristine(arch), example(arch))


def example(arch: str) -> Tensor:
    size = ARCHS[arch].size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


# --- the reference norms -----------------------------------------------------------------------


def oracle_layout(module: nn.Module) -> tuple[str, bool]:
    """(layout, per_position) of an original norm, by what torch, torchvision and timm document:
    batch/group/instance norms and every "*2d" norm act on dim 1; other norms with a
    normalized_shape (LayerNorm, RMSNorm, timm's RmsNorm) on the trailing dim, per position."""
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.SyncBatchNorm | nn.GroupNorm
                  | nn.InstanceNorm1d | nn.InstanceNorm2d | nn.InstanceNorm3d):
        return "first", False
    if hasattr(module, "normalized_shape"):
        return ("first" if "2d" in type(module).__name__ else "last"), True
    return "first", False  # a frozen batch norm


def canonical(x: Tensor, layout: str, channels: int) -> Tensor:
    """x as (N, C, P): channels at dim 1, positions flattened."""
    if layout == "last":
        return x.reshape(x.shape[0], -1, channels).transpose(1, 2)
    return x.reshape(x.shape[0], channels, -1)


def largest_divisor(channels: int, groups: int) -> int:
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def reference(kind: str, layout: str, per_position: bool, x: Tensor, weight: Tensor | None, bias: Tensor | None,
              eps: float, groups: int) -> Tensor:
    """The `kind` norm of x (canonical (N, C, P) form), in float64, from the module docstring's formulas."""
    channels = weight.numel() if weight is not None else x.shape[1 if layout == "first" else -1]
    xc = canonical(x.detach(), layout, channels).double()
    n, c, p = xc.shape
    if kind == "group":
        g = largest_divisor(c, groups)
        grouped = xc.reshape(n, g, -1)
        mean, var = grouped.mean(2, keepdim=True), grouped.var(2, unbiased=False, keepdim=True)
        y = ((grouped - mean) / torch.sqrt(var + eps)).reshape(n, c, p)
    else:
        dims = {"batch": (0, 2), "batch_renorm": (0, 2), "instance": (2,),
                "layer": (1,) if per_position or layout == "last" else (1, 2)}[kind]
        mean, var = xc.mean(dims, keepdim=True), xc.var(dims, unbiased=False, keepdim=True)
        y = (xc - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.detach().double().reshape(1, c, 1)
    if bias is not None:
        y = y + bias.detach().double().reshape(1, c, 1)
    return y


def innermost(module: nn.Module) -> nn.Module:
    while isinstance(module, NormAct | ChannelsLastNorm | ChannelsFirstNorm):
        module = module.norm
    return module


def norm_paths(model: nn.Module) -> dict[str, nn.Module]:
    """Every norm the swap recognizes, by each path it is registered at."""
    return {path: m for path, m in model.named_modules(remove_duplicate=False) if is_norm(m)}


SiteCall = tuple[Tensor, Tensor, Tensor | None, Tensor | None]  # input, output, weight, bias


def _copy(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().clone()


@contextlib.contextmanager
def site_io(model: nn.Module, paths: list[str]) -> Iterator[dict[str, list[SiteCall]]]:
    """Each site's input, output and affine parameters in the forward passes run inside; copies,
    because an in-place ReLU rewrites a norm's output right after, and the optimizer its weights."""
    seen: dict[str, list[SiteCall]] = {}
    hooks = []
    for path in paths:
        site = model.get_submodule(path)
        site = site.norm if isinstance(site, NormAct) else site
        norm = innermost(site)

        def record(_m: nn.Module, args: tuple[Tensor, ...], out: Tensor, path: str = path,
                   norm: nn.Module = norm) -> None:
            weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
            seen.setdefault(path, []).append((args[0].detach().clone(), out.detach().clone(), _copy(weight),
                                              _copy(bias)))

        hooks.append(site.register_forward_hook(record))
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def check_sites(model: nn.Module, originals: dict[str, nn.Module], kind: str, groups: int,
                seen: dict[str, list[SiteCall]]) -> None:
    """Every swapped site's output, in a training-mode pass, is the reference norm of its input
    (within float32 error: a wrong dimension is off by O(1))."""
    for path, calls in seen.items():
        layout, per_position = oracle_layout(originals[path])
        norm = innermost(model.get_submodule(path))
        for inputs, output, weight, bias in calls:
            if kind == "none":
                torch.testing.assert_close(output, inputs, equal_nan=True, msg=f"{path}: none is not the identity")
                continue
            expected = reference(kind, layout, per_position, inputs, weight, bias, norm.eps, groups)
            actual = canonical(output, layout, expected.shape[1]).double()
            torch.testing.assert_close(actual, expected, atol=1e-2, rtol=1e-2,
                                       msg=lambda m, path=path: f"{path} ({type(originals[path]).__name__}): {m}")


# --- every torchvision model, structurally, on the meta device ---------------------------------


def build_on_meta(name: str) -> nn.Module:
    """`name` with meta tensors. RegNet computes its widths with tensors (.tolist()), which the
    meta device cannot give: it is built on the CPU with every initializer a no-op (the memory
    is allocated but never touched), then moved to meta."""
    try:
        with torch.device("meta"):
            return build_torchvision(name)
    except NotImplementedError:
        with pytest.MonkeyPatch.context() as patch:
            for init in ("normal_", "zeros_", "ones_", "uniform_", "kaiming_normal_", "kaiming_uniform_",
                         "trunc_normal_", "constant_", "xavier_uniform_"):
                patch.setattr(nn.init, init, lambda tensor, *_, **__: tensor)
            return build_torchvision(name).to("meta")


TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_structure_on_every_torchvision_model(name: str) -> None:
    """Every norm recognized, and for each type the new layer of every site takes what the old
    one saw; one whole swap per model, the type taken in turn, runs a forward pass."""
    model = build_on_meta(name)
    size = torchvision_kwargs(name)[1]
    x = torch.empty(2, 3, size, size, device="meta")
    record = trace(model, x)
    assert [layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            for layer in final_layers(record)] == [10]
    shapes: dict[nn.Module, list[tuple[int, ...]]] = {}
    for call in record.calls:
        shapes.setdefault(call.module, []).append(call.input_shapes[0])
    sites = norm_sites(model, x)
    assert all(site is not None for site in sites.values())
    for kind in NORM_TYPES[1:]:
        for module, site in sites.items():
            if kind == "instance" and instance_undefined(site):
                continue
            new = replacement(module, site, kind, GROUPS).train()
            for shape in shapes.get(module, []):
                assert new(torch.empty(shape, device="meta")).shape == shape, (kind, type(module).__name__)
    kind = NORM_TYPES[1 + TORCHVISION_MODELS.index(name) % (len(NORM_TYPES) - 1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swapped = swap_norms(model, x, type=kind)
    assert all("cannot tell" not in str(w.message) and "left" not in str(w.message) for w in caught)
    assert swapped.train()(x).shape == (2, 10)


# --- the trick matrix on representatives ------------------------------------------------------

# (norm type, init scheme, dropout p, pruning ratio): together every value, and all at once.
CASES: list[tuple[str, str, float | None, float]] = [
    ("batch", "xavier_uniform", 0.3, 0.0),
    ("group", "xavier_normal", None, 0.0),
    ("layer", "kaiming_uniform", None, 0.0),
    ("none", "kaiming_normal", None, 0.0),
    ("keep", "orthogonal", None, 0.0),
    ("keep", "default", None, 0.5),
    ("instance", "trunc_normal", 0.2, 0.3),
    ("batch_renorm", "default", None, 0.0),  # batch norm while r and d are held at 1 and 0 (early in a run)
]
GROUPS = 4


def test_the_cases_cover_every_value() -> None:
    norms, schemes, dropouts, ratios = zip(*CASES, strict=True)
    assert set(norms) == set(NORM_TYPES) and set(schemes) == set(SCHEMES)
    assert any(dropouts) and any(ratios)
    assert any(n != "keep" and s != "default" and p and r for n, s, p, r in CASES)  # all at once


def case_values(norm: str, scheme: str, p: float | None, ratio: float) -> dict[str, Value]:
    return {"norm.type": norm, "norm.groups": GROUPS, "init.scheme": scheme, "init.zero_last_norm": True,
            "dropout.p": p, "prune.ratio": ratio}


def expected_std(scheme: str, weight: Tensor) -> float | None:
    fan_in, fan_out = fans(weight)
    if scheme.startswith("xavier"):
        return math.sqrt(2 / (fan_in + fan_out))
    if scheme.startswith("kaiming"):
        return math.sqrt(2) / math.sqrt(fan_in)
    if scheme == "trunc_normal":
        return 0.02 * 0.8796
    return None


def fans(weight: Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def cases() -> list[Any]:
    out = []
    for arch, spec in ARCHS.items():
        for norm, scheme, p, ratio in (CASES[i] for i in spec.cases):
            parts = (arch, norm, scheme, p and f"dropout{p}", ratio and f"prune{ratio}")
            out.append(pytest.param(arch, norm, scheme, p, ratio, id="-".join(str(s) for s in parts if s)))
    return out


def test_every_case_runs_on_the_small_models() -> None:
    assert all(spec.cases == tuple(range(len(CASES))) for name, spec in ARCHS.items()
               if name not in ("tv-inception_v3", "timm-poolformer_s12",
                               "timm-deit_tiny_distilled", "timm-levit_128s"))


@pytest.mark.parametrize(("arch", "norm", "scheme", "p", "ratio"), cases())
def test_every_trick_on_the_model(arch: str, norm: str, scheme: str, p: float | None, ratio: float) -> None:
    spec = ARCHS[arch]
    model, x = copy.deepcopy(pristine(arch)), example(arch)
    originals = norm_paths(model)
    weights_before = [m.weight.detach().clone() for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrickNote)
        model = prepare_model(model, case_values(norm, scheme, p, ratio), x)
    notes = " | ".join(str(w.message) for w in caught if issubclass(w.category, TrickNote))

    # init: the formula on every conv/linear weight (their biases 0), or the model's own weights
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    if scheme == "default":
        assert all(torch.equal(m.weight, w) for m, w in zip(layers, weights_before, strict=True))
    else:
        assert all(m.bias is None or not torch.any(m.bias) for m in layers)
        largest = max(layers, key=lambda m: m.weight.numel())
        std = expected_std(scheme, largest.weight)
        if std is not None and largest.weight.numel() > 10_000:
            assert largest.weight.std().item() == pytest.approx(std, rel=0.1)

    # zero_last_norm: only norms closing a residual branch, one per such block
    zeroed = [m for m in model.modules() if is_norm(m) and isinstance(getattr(m, "weight", None), Tensor)
              and m.weight.numel() and not torch.any(m.weight)]
    if spec.zeroed is not None and norm != "none":
        assert len(zeroed) == spec.zeroed, notes
    assert "init.zero_last_norm: " in notes

    # dropout: p everywhere, and one feeding every final classifier
    if p:
        assert all(d.p == p for d in model.modules() if isinstance(d, DROPOUT_LAYERS))
        assert all(fed for _, fed in classifiers(model, x))

    # the model check: no activation lost, features that depend on the input, a classifier that
    # learns; silent unless this combination really breaks this model
    warning = check_model(model, x, activations_before=pristine_activations(arch))
    assert bool(warning) == ((norm, scheme) in spec.damaged), warning

    # norm: every site swapped computes the reference norm of its input, in the first training
    # step; the sites kept (instance norm where it is undefined) are said
    kept = {path for path in originals if model.get_submodule(path) is originals[path]} if norm != "keep" else set()
    assert norm == "instance" or not kept, kept
    assert all(path in notes for path in kept) or "more" in notes
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    finite = norm not in spec.diverges  # a transformer without norms may diverge: the trainer says "diverged"
    with site_io(model, [path for path in originals if path not in kept] if norm != "keep" else []) as seen:
        train_step(model, x, optimizer, finite=finite)
    check_sites(model, originals, norm, GROUPS, seen)
    assert norm == "keep" or seen or not set(originals) - kept
    train_step(model, x, optimizer, finite=finite)
    if ratio:  # after training: prune, finetune a step with the mask held
        prune_weights(model, ratio=ratio)
        train_step(model, x, torch.optim.SGD(model.parameters(), lr=1e-3), finite=finite)
        assert measure_sparsity(model).sparsity == pytest.approx(ratio, abs=0.01)


def train_step(model: nn.Module, x: Tensor, optimizer: torch.optim.Optimizer, *, finite: bool = True) -> None:
    model.train()
    out = model(x)
    loss = F.cross_entropy(out, torch.tensor([0, 1]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert out.shape == (2, 10) and (torch.isfinite(loss) or not finite)


@pytest.mark.parametrize("name", ["googlenet", "efficientnet_b0"])
def test_the_model_check_flags_models_whose_scale_needs_their_norms(name: str) -> None:
    """Without its norms (and with its own init), the signal vanishes by the classifier: the
    features are ~1e-11 to 1e-14 for every image, the logits the classifier's bias."""
    torch.manual_seed(0)
    model, x = build_torchvision(name), example("tv-googlenet")
    activations = count_activations(model, x)
    model = prepare_model(model, {"norm.type": "none"}, x)
    assert check_model(model, x, activations_before=activations) == \
        "model check: the features reaching the classifier no longer depend on the input"
