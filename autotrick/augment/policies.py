"""torchvision's v2 AutoAugment, RandAugment and TrivialAugmentWide on uint8 batches, each image its
own draw, applied on the batch's device: `policy(images, generator) -> images`.

Same op sets, magnitude tables, signs, probabilities, fill 0 and nearest sampling as
`torchvision/transforms/v2/_auto_augment.py` (0.29); tests/test_augment.py replays torchvision's
own random draws through these tables and gets torchvision's images, and checks each image's draw
against torchvision's outcome distribution.

How: a policy is a categorical distribution over short op sequences ("programs": TrivialAugmentWide
one op at one of 31 magnitudes with a sign; AutoAugment a sub-policy's two ops, each applied or not,
each signed; RandAugment num_ops independent draws of one op). Per batch, one uniform number per
image and draw, from the caller's CPU `torch.Generator`, picks its program; the images' order by
op and their programs cross to the device as one small table in one non-blocking copy. Each
program's parameters are precomputed (magnitude, affine matrix, look-up table for the pointwise
ops that do not depend on the image, and on images up to 32x32 the pixel each pixel reads), and
copied to a device once. On the device each op kind runs once per step, on the run of images that
drew it. The same generator state gives the same batch on any device, and nothing waits on the
device. On the CPU a batch goes through in pieces of about 1 MB, which keeps each op's
temporaries in cache (up to 2x at 224 x 224 in our runs).

Why not kornia (`kornia.augmentation.auto`, 0.9.0; read, and measured by benchmarks/augment.py on
the 2-core VM, figures in benchmarks/README.md):
- it draws one op (TrivialAugment, RandAugment) or one sub-policy (AutoAugment) per *batch*: only
  magnitudes and probabilities vary per image, so a batch of 256 gets 1 or 2 op kinds, not 256 draws;
- its tables are not torchvision's: TrivialAugment has 12 ops (no identity, no colour), rotates at
  most 30 degrees (torchvision: 135), shears up to 0.3·180 degrees, translates by image fractions;
  RandAugment adds invert and solarize-add; magnitudes come from ranges, not 31 bins;
- its ops are not torchvision's at the same magnitude: rotation and shear interpolate bilinearly
  (torchvision: nearest), brightness adds instead of multiplying, contrast scales instead of
  blending with the mean, saturation goes through HSV: on random 32x32 images 87% (rotate 20
  degrees), 96% (shear 0.2), 77% (brightness 1.3), 87% (contrast 1.3) and 88% (saturation 1.3) of
  the pixels end more than 1 level from torchvision's (translation, sharpness, posterize, solarize,
  equalize and invert agree);
- it draws from torch's global generator and takes no generator, so a trial's augmentation could
  not follow its seed apart from everything else that draws random numbers;
- it is slower, one thread, batches of 256 (load average 6-10 on the shared 2-core VM): 22,000 to
  82,000 images/s at 32x32x3 against 87,000 to 149,000 here, and 65 to 248 at 224x224x3 against
  843 to 1,705 here (torchvision one image at a time: 8,300 to 13,400 and 392 to 1,226).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from autotrick.augment import ops
from autotrick.device import to_device

KINDS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
         "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
_KIND = {name: i for i, name in enumerate(KINDS)}

# name -> (magnitudes(num_bins, height, width) or None, signed): torchvision's _AUGMENTATION_SPACE
Space = dict[str, tuple[Callable[[int, int, int], Tensor | None], bool]]


def _linspace(high: float, low: float = 0.0) -> Callable[[int, int, int], Tensor]:
    return lambda bins, height, width: torch.linspace(low, high, bins)


def _posterize_bits(fewest: int) -> Callable[[int, int, int], Tensor]:
    """8 bits down to `fewest`, rounded from a float32 ramp as torchvision rounds it."""
    return lambda bins, height, width: (8 - (torch.arange(bins) / ((bins - 1) / (8 - fewest)))).round().int()


def _none(bins: int, height: int, width: int) -> None:
    return None


_COMMON: Space = {
    "ShearX": (_linspace(0.3), True),
    "ShearY": (_linspace(0.3), True),
    "TranslateX": (lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * width, bins), True),
    "TranslateY": (lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * height, bins), True),
    "Rotate": (_linspace(30.0), True),
    "Brightness": (_linspace(0.9), True),
    "Color": (_linspace(0.9), True),
    "Contrast": (_linspace(0.9), True),
    "Sharpness": (_linspace(0.9), True),
    "Posterize": (_posterize_bits(4), False),
    "Solarize": (_linspace(0.0, low=1.0), False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
AUTOAUGMENT_SPACE: Space = {**_COMMON, "Invert": (_none, False)}
RANDAUGMENT_SPACE: Space = {"Identity": (_none, False), **_COMMON}
TRIVIALAUGMENT_SPACE: Space = {
    "Identity": (_none, False),
    "ShearX": (_linspace(0.99), True),
    "ShearY": (_linspace(0.99), True),
    "TranslateX": (_linspace(32.0), True),  # pixels, whatever the image size
    "TranslateY": (_linspace(32.0), True),
    "Rotate": (_linspace(135.0), True),
    "Brightness": (_linspace(0.99), True),
    "Color": (_linspace(0.99), True),
    "Contrast": (_linspace(0.99), True),
    "Sharpness": (_linspace(0.99), True),
    "Posterize": (_posterize_bits(2), False),
    "Solarize": (_linspace(0.0, low=1.0), False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}

# (op, probability, magnitude bin of 10), two per sub-policy: the learned policies as torchvision lists them
SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]
AUTOAUGMENT_POLICIES: dict[str, tuple[SubPolicy, ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)), (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)), (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)), (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)), (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)), (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)), (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)), (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)), (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)), (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)), (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)), (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)), (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}

Outcome = tuple[str, float, float]  # (op, signed magnitude, probability)


def outcomes(space: Space, name: str, magnitude_bin: int | None, num_bins: int, height: int,
             width: int) -> list[Outcome]:
    """What torchvision does with op `name` at `magnitude_bin`: the magnitude, negated half the time if signed."""
    magnitudes_fn, signed = space[name]
    magnitudes = magnitudes_fn(num_bins, height, width)
    if magnitudes is None or magnitude_bin is None:
        return [(name, 0.0, 1.0)]
    magnitude = float(magnitudes[magnitude_bin])
    return [(name, magnitude, 0.5), (name, -magnitude, 0.5)] if signed else [(name, magnitude, 1.0)]


@dataclass(eq=False)
class Programs:
    """A categorical distribution over op sequences of one length L, drawn once per image, with what
    each step needs precomputed: how it runs, its parameters, and for the ops that do not depend on
    the image, its look-up table and (images of MAPPED_PIXELS or fewer) the pixel each pixel reads."""

    kinds: Tensor  # int64 (K, L): indices into KINDS
    magnitudes: Tensor  # float32 (K, L): torchvision's signed magnitudes
    probabilities: Tensor  # float64 (K,), summing to 1
    groups: Tensor  # int64 (K, L): how each step runs (IDENTITY, STATIC, ...)
    prepared: Prepared  # on the CPU; Programs.on(device) has them on a device
    _on_device: dict[torch.device, Prepared] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, kinds: Tensor, magnitudes: Tensor, probabilities: Tensor, height: int, width: int) -> Programs:
        """Programs of ops `kinds` at `magnitudes` ((K, L)) for images of height x width."""
        params = op_parameters(kinds, magnitudes, height, width)
        mapped = height * width <= MAPPED_PIXELS
        groups = (_GROUP_MAPPED if mapped else _GROUP)[kinds]
        maps = _index_maps(kinds, params, height, width) if mapped else None
        return cls(kinds, magnitudes, probabilities, groups, Prepared(params, _lookup_tables(kinds, magnitudes), maps))

    @classmethod
    def listed(cls, programs: Sequence[tuple[Sequence[tuple[str, float]], float]], height: int,
               width: int) -> Programs:
        """From [([(op, magnitude), ...], probability), ...]."""
        return cls.of(torch.tensor([[_KIND[op] for op, _ in steps] for steps, _ in programs]),
                      torch.tensor([[m for _, m in steps] for steps, _ in programs], dtype=torch.float32),
                      torch.tensor([p for _, p in programs], dtype=torch.float64), height, width)

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """The programs (n,) of n independent draws: one uniform number each, inverted through the
        cumulative probabilities."""
        cumulative = self.probabilities.cumsum(0)
        uniform = torch.rand(n, generator=generator, dtype=torch.float64) * cumulative[-1]
        return torch.searchsorted(cumulative, uniform, right=True).clamp_(max=len(cumulative) - 1)

    def on(self, device: torch.device) -> Prepared:
        """What the ops take, on `device`: copied there on first use (the only copy that waits)."""
        if device.type == "cpu":
            return self.prepared
        if device not in self._on_device:
            params, tables, maps = self.prepared
            self._on_device[device] = Prepared(params.to(device), tables.to(device),
                                               None if maps is None else maps.to(device))
        return self._on_device[device]


class Prepared(NamedTuple):
    """Per program and step: what the op groups take."""

    params: Tensor  # float32 (K, L, 6): the magnitude (column 0), or a geometric op's inverse affine matrix
    tables: Tensor  # uint8 (K, L, 256): a fixed pointwise op's value for each level (other ops: 0..255)
    maps: Tensor | None  # int64 (K, L, H·W): the pixel each pixel reads (ops.source_index); small images


Step = tuple[Programs, int, Tensor]  # (programs, which step of them, each image's program (N,) on the CPU)


class Policy:
    """A batched augmentation policy: `policy(images, generator)` on uint8 (N, C, H, W), C = 1 or 3."""

    def __init__(self) -> None:
        self._programs: dict[tuple[int, int], tuple[Programs, ...]] = {}

    def programs(self, height: int, width: int) -> tuple[Programs, ...]:
        """The draws one image goes through, in order (translations scale with the image size)."""
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise TypeError(f"{self!r} needs uint8 images (N, 1 or 3, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        n, _, h, w = images.shape
        if (h, w) not in self._programs:
            self._programs[h, w] = self.programs(h, w)
        steps: list[Step] = []
        for programs in self._programs[h, w]:
            drawn = programs.draw(n, generator)
            steps.extend((programs, column, drawn) for column in range(programs.kinds.shape[1]))
        return _apply(images, steps)


class TrivialAugmentWide(Policy):
    """One op of 14, uniformly, at one of 31 magnitudes, uniformly, with a random sign if signed."""

    def programs(self, height: int, width: int) -> tuple[Programs, ...]:
        space, bins = TRIVIALAUGMENT_SPACE, 31
        programs = []
        for name, (magnitudes_fn, _) in space.items():
            choices = [0] if magnitudes_fn(bins, height, width) is None else range(bins)
            for magnitude_bin in choices:
                for op, m, p in outcomes(space, name, magnitude_bin, bins, height, width):
                    programs.append(([(op, m)], p / len(space) / len(choices)))
        return (Programs.listed(programs, height, width),)

    def __repr__(self) -> str:
        return "TrivialAugmentWide()"


class RandAugment(Policy):
    """num_ops ops in a row, each one of 14 uniformly, all at bin `magnitude` of 31, signs random."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9) -> None:
        super().__init__()
        if num_ops < 0 or not 0 <= magnitude < 31:
            raise ValueError(f"RandAugment needs num_ops >= 0 and magnitude in 0..30, got {num_ops}, {magnitude}")
        self.num_ops, self.magnitude = num_ops, magnitude

    def programs(self, height: int, width: int) -> tuple[Programs, ...]:
        space = RANDAUGMENT_SPACE
        one_op = Programs.listed([([(op, m)], p / len(space)) for name in space
                                  for op, m, p in outcomes(space, name, self.magnitude, 31, height, width)],
                                 height, width)
        return (one_op,) * self.num_ops

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude})"


class AutoAugment(Policy):
    """One of the policy's 25 sub-policies, uniformly; each of its two ops applied with its
    probability, at its bin of 10, with a random sign if signed."""

    def __init__(self, policy: str = "imagenet") -> None:
        super().__init__()
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}; "
                             f"expected one of {', '.join(AUTOAUGMENT_POLICIES)}")
        self.policy = policy

    def programs(self, height: int, width: int) -> tuple[Programs, ...]:
        sub_policies = AUTOAUGMENT_POLICIES[self.policy]
        programs = []
        for sub_policy in sub_policies:
            per_op = [[("Identity", 0.0, 1.0 - probability)]
                      + [(op, m, probability * p)
                         for op, m, p in outcomes(AUTOAUGMENT_SPACE, name, magnitude_bin, 10, height, width)]
                      for name, probability, magnitude_bin in sub_policy]
            for first, second in itertools.product(*per_op):
                probability = first[2] * second[2] / len(sub_policies)
                if probability > 0:
                    programs.append(([first[:2], second[:2]], probability))
        return (Programs.listed(programs, height, width),)

    def __repr__(self) -> str:
        return f"AutoAugment({self.policy!r})"


# --- applying drawn ops to a batch -----------------------------------------------------------------

CPU_CHUNK_BYTES = 1 << 20
MAPPED_PIXELS = 32 * 32  # up to this size, every program's pixel map is precomputed (32x32: 8 KB each)

# How a step runs: each group is one pass over the run of images that drew one of its ops. On small
# images every op that does not depend on the image (geometric ones, fixed pointwise ones) is STATIC:
# its precomputed pixel map and table, two gathers. On bigger ones the geometric ops' maps are
# computed for the images that drew them (WARP), brightness and solarize are one table (LOOKUP), and
# posterize and invert, one bitwise op each, are cheaper than a table.
IDENTITY, STATIC, WARP, LOOKUP, POSTERIZE, INVERT, COLOR, CONTRAST, SHARPNESS, AUTOCONTRAST, EQUALIZE = range(11)
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_FIXED_POINTWISE = ("Brightness", "Posterize", "Solarize", "Invert")
_OTHERS = {"Identity": IDENTITY, "Color": COLOR, "Contrast": CONTRAST, "Sharpness": SHARPNESS,
           "AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE}
_GROUP = torch.tensor([WARP if k in _GEOMETRIC else {**_OTHERS, "Brightness": LOOKUP, "Solarize": LOOKUP,
                                                      "Posterize": POSTERIZE, "Invert": INVERT}[k] for k in KINDS])
_GROUP_MAPPED = torch.tensor([STATIC if k in _GEOMETRIC + _FIXED_POINTWISE else _OTHERS[k] for k in KINDS])
# group -> its op on a run of images, given the prepared tensors and the run's programs and step
_RUN: dict[int, Callable[[Tensor, Prepared, Tensor, int], Tensor]] = {
    STATIC: lambda x, p, which, j: ops.lookup(ops.remap(x, p.maps[which, j]), p.tables[which, j]),  # type: ignore[index]
    WARP: lambda x, p, which, j: ops.warp(x, p.params[which, j].view(-1, 2, 3)),
    LOOKUP: lambda x, p, which, j: ops.lookup(x, p.tables[which, j]),
    POSTERIZE: lambda x, p, which, j: ops.posterize(x, p.params[which, j, 0]),
    INVERT: lambda x, p, which, j: ops.invert(x),
    COLOR: lambda x, p, which, j: ops.color(x, p.params[which, j, 0]),
    CONTRAST: lambda x, p, which, j: ops.contrast(x, p.params[which, j, 0]),
    SHARPNESS: lambda x, p, which, j: ops.sharpness(x, p.params[which, j, 0]),
    AUTOCONTRAST: lambda x, p, which, j: ops.autocontrast(x),
    EQUALIZE: lambda x, p, which, j: ops.equalize(x),
}

_MATRICES: dict[int, Callable[[Tensor, int, int], Tensor]] = {
    _KIND["ShearX"]: ops.shear_x_matrix, _KIND["ShearY"]: ops.shear_y_matrix,
    _KIND["TranslateX"]: ops.translate_x_matrix, _KIND["TranslateY"]: ops.translate_y_matrix,
    _KIND["Rotate"]: ops.rotate_matrix,
}
# the pointwise ops that depend on their magnitude only: one table of 256 values each
_POINTWISE: dict[int, Callable[[Tensor, Tensor], Tensor]] = {
    _KIND["Brightness"]: ops.brightness, _KIND["Posterize"]: ops.posterize, _KIND["Solarize"]: ops.solarize,
    _KIND["Invert"]: lambda images, magnitude: ops.invert(images),
}


def op_parameters(kinds: Tensor, magnitudes: Tensor, height: int, width: int) -> Tensor:
    """(..., 6) float32 for ops `kinds` at `magnitudes` (both (...)): the magnitude in column 0, or for
    a geometric op its inverse affine matrix, made in float64 and rounded once as torchvision does."""
    params = torch.zeros(*kinds.shape, 6, dtype=torch.float64)
    params[..., 0] = magnitudes
    for kind, matrix in _MATRICES.items():
        chosen = kinds == kind
        params[chosen] = matrix(magnitudes[chosen], height, width).view(-1, 6)
    return params.float()


def _lookup_tables(kinds: Tensor, magnitudes: Tensor) -> Tensor:
    """(..., 256) uint8: each fixed pointwise op applied to the image of all 256 levels (others: the levels)."""
    levels = torch.arange(256, dtype=torch.uint8)
    tables = levels.expand(*kinds.shape, 256).clone()
    for kind, op in _POINTWISE.items():
        chosen = kinds == kind
        count = int(chosen.sum())
        if count:
            tables[chosen] = op(levels.expand(count, 1, 1, 256), magnitudes[chosen]).view(count, 256)
    return tables


def _index_maps(kinds: Tensor, params: Tensor, height: int, width: int) -> Tensor:
    """(..., H·W) int64: the pixel each pixel reads under each geometric op (others: itself)."""
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    geometric = torch.isin(kinds, torch.tensor(list(_MATRICES)))
    matrices = torch.where(geometric[..., None, None], params.view(*kinds.shape, 2, 3), identity)
    return ops.source_index(matrices.view(-1, 2, 3), height, width).view(*kinds.shape, height * width)


def apply_ops(images: Tensor, kinds: Tensor, magnitudes: Tensor) -> Tensor:
    """Step j of image i is op KINDS[kinds[i, j]] at magnitudes[i, j] (kinds and magnitudes (N, L) on the CPU)."""
    n, steps = kinds.shape
    programs = Programs.of(kinds, magnitudes, torch.full((n,), 1 / n, dtype=torch.float64), *images.shape[-2:])
    return _apply(images, [(programs, column, torch.arange(n)) for column in range(steps)])


def _apply(images: Tensor, steps: Sequence[Step]) -> Tensor:
    """Run the drawn steps, in order, on the batch.

    Per step, on the CPU, the images are sorted by how their op runs (see STATIC, WARP, ...); the
    order and each image's program, for all steps, cross to the device in one copy. There, per
    step: one gather sorts the batch, each group's run of images goes through its op with its
    programs' prepared tensors (copied to the device once), identity runs stay as they are, and
    one scatter puts the images back. A step without ops is skipped.
    """
    n, shape = len(images), images.shape[1:]
    images = images.contiguous()
    chunk = max(1, CPU_CHUNK_BYTES // shape.numel())
    if images.device.type == "cpu" and n > chunk:
        # A few images at a time: each op's temporaries stay in the CPU's caches.
        return torch.cat([_apply(images[start:start + chunk],
                                 [(programs, column, drawn[start:start + chunk]) for programs, column, drawn in steps])
                          for start in range(0, n, chunk)])
    plans: list[tuple[Programs, int, list[tuple[int, int, int]]]] = []  # runs: (group, first, after last)
    rows = []
    for programs, column, drawn in steps:
        group = programs.groups[drawn, column]
        if shape[0] == 1:  # saturation leaves grey images as they are
            group = torch.where(group == COLOR, IDENTITY, group)
        counts = torch.bincount(group, minlength=len(_RUN) + 1).tolist()  # a CPU tensor: no device sync
        if counts[IDENTITY] == n:
            continue
        order = torch.argsort(group, stable=True)
        bounds = list(itertools.accumulate(counts, initial=0))
        plans.append((programs, column, [(g, bounds[g], bounds[g + 1]) for g in _RUN if counts[g]]))
        rows.append(torch.stack([order, drawn[order]]))
    if not plans:
        return images
    table = to_device(torch.stack(rows), images.device)  # (steps, 2, N): the order, each row's program
    for (programs, column, runs), (order, drawn) in zip(plans, table.unbind(0), strict=True):
        prepared = programs.on(images.device)
        ordered = _rows(images).index_select(0, order)  # a new tensor: its runs can be changed in place
        ordered_images = ordered.view(torch.uint8).view(n, *shape)
        for op_group, start, stop in runs:
            run = ordered_images[start:stop]
            run.copy_(_RUN[op_group](run, prepared, drawn[start:stop], column))
        images = torch.empty_like(images)
        _rows(images).index_copy_(0, order, ordered)
    return images


def _rows(images: Tensor) -> Tensor:
    """Each image as one row, of 8-byte words when its bytes divide evenly: moving rows of words is ~4x
    faster than rows of bytes. A view: writing to it writes the images."""
    rows = images.view(len(images), -1)
    if rows.shape[1] % 8 == 0 and rows.storage_offset() % 8 == 0:
        return rows.view(torch.int64)
    return rows
