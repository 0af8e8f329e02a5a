"""mixup and cutmix: train on convex combinations of pairs of examples and of their soft targets.

mixup:  x = lam * x_i + (1 - lam) * x_j,             lam ~ Beta(alpha, alpha)
cutmix: x = x_i with a box from x_j pasted in,       lam = 1 - box area / image area
both:   y = lam * y_i + (1 - lam) * y_j (y already label-smoothed, so it still sums to 1).
With both alphas > 0, each batch uses one of the two at random (as timm does).
"""

import math

import numpy as np
import torch
from torch import Tensor

from autotrick.device import to_device
from autotrick.params import Param, Trick

MIX = Trick(
    name="mix",
    summary="mixup / cutmix: x = lam*x_i + (1-lam)*x_j, y likewise, lam ~ Beta(alpha, alpha)",
    params=(
        Param("mixup_alpha", "float", 0.0, "mixup Beta(alpha, alpha); 0 is off", low=0.0, high=1.0,
              bounds=(0.0, 10.0)),
        Param("cutmix_alpha", "float", 0.0, "cutmix Beta(alpha, alpha); 0 is off", low=0.0, high=1.0,
              bounds=(0.0, 10.0)),
    ),
)


def mix_batch(x: Tensor, targets: Tensor, *, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mix a batch with a permutation of itself: inputs (N, ...) (cutmix: images (N, C, H, W)),
    soft targets (N, K). Both alphas 0 returns the inputs unchanged.

    Every draw comes from `generator` (a CPU one; None: torch's global one), in a fixed order, so a
    generator seeded alike mixes alike.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or _uniform(generator) < 0.5)
    lam = _beta(cutmix_alpha if use_cutmix else mixup_alpha, generator)
    perm = to_device(torch.randperm(x.shape[0], generator=generator), x.device)  # no sync on a GPU
    if use_cutmix:
        x, lam = _paste_box(x, x[perm], lam, generator)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * targets + (1 - lam) * targets[perm]


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """lam ~ Beta(alpha, alpha). torch's Beta sampler takes no generator, so the draw is numpy's,
    seeded from `generator`: reproducible whenever the generator is."""
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _paste_box(x: Tensor, other: Tensor, lam: float,
               generator: torch.Generator | None) -> tuple[Tensor, float]:
    """CutMix (Yun et al., 2019): paste a box of `other` of sides (H, W) * sqrt(1 - lam) centred
    at a uniform pixel, clipped to the image; return the images and lam = 1 - pasted area / H W,
    recomputed since the clipping shrinks the box."""
    height, width = x.shape[-2:]
    rows = _span(height, height * math.sqrt(1 - lam), generator)
    cols = _span(width, width * math.sqrt(1 - lam), generator)
    mixed = x.clone()
    mixed[..., rows, cols] = other[..., rows, cols]
    pasted = (rows.stop - rows.start) * (cols.stop - cols.start)
    return mixed, 1 - pasted / (height * width)


def _span(size: int, length: float, generator: torch.Generator | None) -> slice:
    """The indices [c - length/2, c + length/2) of a side of `size`, c uniform, clipped to the side."""
    start = int(torch.randint(size, (), generator=generator)) - int(length) // 2
    return slice(max(start, 0), min(start + int(length), size))
