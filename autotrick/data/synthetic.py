"""`synthetic:SHAPE[:N]`: generated, learnable image data of a known shape, for throughput checks
without any download.

    synthetic:cifar10         3x32x32, 10 classes, 50,000 training images (CIFAR-10's shape and size)
    synthetic:cifar100        3x32x32, 100 classes, 50,000
    synthetic:mnist           1x28x28, 10 classes, 60,000 (also fashion_mnist)
    synthetic:imagenet        3x224x224, 1000 classes, 10,000 (ImageNet's shape, not its size)
    synthetic:CxHxW:K         any shape (C of 1 or 3, H and W >= 4) with K >= 2 classes, 10,000
    ...:N                     N training images instead, e.g. synthetic:cifar10:5000

The validation split has N // 5 images. Each class k has a prototype image P_k, and an example of
class k is

    x = 128 + 32 * (P_k + 2 * noise),  noise ~ N(0, 1) per pixel, rounded and clipped to uint8

as in the peer benchmark's data (prototypes plus twice their scale of noise), stored as uint8 like
every data set here. The prototypes are smooth (unit-variance Gaussian noise drawn at a quarter of
the resolution, upsampled bilinearly), so that a small CNN's pooling keeps their evidence as it does
a real image's; white-noise prototypes would be averaged away. The generator is seeded from the
spec: the same spec gives the same images in every process, whatever the trial's seed. No random
crop or flip: a shifted or mirrored prototype is another pattern, not the same class.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from autotrick.errors import ConfigError

PREFIX = "synthetic:"
NOISE = 2.0  # the noise's standard deviation, in units of the prototypes' (the peer's ratio)
SCALE, OFFSET = 32.0, 128.0  # uint8 = OFFSET + SCALE * (prototype + noise): 2.2 sigma fit in 0..255
DEFAULT_TRAIN = 10_000

# name: (channels, height, width, classes, training images)
NAMED: dict[str, tuple[int, int, int, int, int]] = {
    "cifar10": (3, 32, 32, 10, 50_000),
    "cifar100": (3, 32, 32, 100, 50_000),
    "mnist": (1, 28, 28, 10, 60_000),
    "fashion_mnist": (1, 28, 28, 10, 60_000),
    "imagenet": (3, 224, 224, 1000, DEFAULT_TRAIN),
}
FORM = (f"synthetic:NAME[:N] with NAME one of {', '.join(NAMED)}, or synthetic:CxHxW:K[:N] "
        "(C 1 or 3, H and W >= 4, K >= 2 classes, N >= 5 training images)")


@dataclass(frozen=True)
class SyntheticShape:
    channels: int
    height: int
    width: int
    classes: int
    train: int

    @property
    def val(self) -> int:
        return self.train // 5


def parse_synthetic(spec: str) -> SyntheticShape:
    """The shape a `synthetic:...` spec names; a ConfigError naming the form otherwise."""
    parts = spec.removeprefix(PREFIX).split(":")

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"data set '{spec}': {problem}; expected {FORM}")

    def number(text: str, what: str) -> int:
        if not text.isdigit():
            raise bad(f"{what} {text!r} is not a whole number")
        return int(text)

    if parts[0] in NAMED:
        channels, height, width, classes, train = NAMED[parts[0]]
        rest = parts[1:]
    elif parts[0].count("x") == 2:
        channels, height, width = (number(p, "the size") for p in parts[0].split("x"))
        if len(parts) < 2:
            raise bad("name the class count after the shape, as synthetic:3x32x32:10")
        classes, train, rest = number(parts[1], "the class count"), DEFAULT_TRAIN, parts[2:]
    else:
        raise bad(f"unknown shape {parts[0]!r}")
    if len(rest) > 1:
        raise bad("too many ':' parts")
    if rest:
        train = number(rest[0], "the image count")
    if channels not in (1, 3) or min(height, width) < 4 or classes < 2 or train < 5:
        raise bad(f"{channels}x{height}x{width} images, {classes} classes, {train} images are out of range")
    return SyntheticShape(channels, height, width, classes, train)


def synthetic_splits(spec: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x, train_y, val_x, val_y) for `spec`: uint8 (N, C, H, W) images, int64 labels."""
    shape = parse_synthetic(spec)
    generator = torch.Generator().manual_seed(zlib.crc32(spec.encode()))  # stable across processes
    small = (shape.classes, shape.channels, math.ceil(shape.height / 4), math.ceil(shape.width / 4))
    prototypes = F.interpolate(torch.randn(small, generator=generator), size=(shape.height, shape.width),
                               mode="bilinear", align_corners=False)
    prototypes /= prototypes.std()
    labels = torch.randint(shape.classes, (shape.train + shape.val,), generator=generator)
    images = torch.empty((len(labels), shape.channels, shape.height, shape.width), dtype=torch.uint8)
    chunk = max(1, 2**24 // prototypes[0].numel())  # ~64 MB of float32 at a time, whatever the shape
    for start in range(0, len(labels), chunk):
        y = labels[start:start + chunk]
        noise = torch.randn((len(y), *prototypes.shape[1:]), generator=generator)
        x = (prototypes[y] + NOISE * noise).mul_(SCALE).add_(OFFSET)
        images[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return images[:shape.train], labels[:shape.train], images[shape.train:], labels[shape.train:]
