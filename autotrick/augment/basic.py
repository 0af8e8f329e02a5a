"""The data set's own augmentation (random crop with padding, horizontal flip) and normalization,
as batched tensor ops that run wherever the batch is (no per-image work, no host sync).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from autotrick.device import to_device
from autotrick.errors import ConfigError


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images (N, C, H, W) or (C, H, W) -> float32 (x/255 - mean) / std, per channel."""
    shift, scale = _affine(tuple(mean), tuple(std), x.device)
    return torch.addcmul(shift, x.float(), scale)  # one fused pass: shift + x * scale


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    # Made once per device: building them every batch would copy host to GPU (and sync) each time.
    m = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    return (-m / s).float().to(device), (1.0 / (255.0 * s)).float().to(device)


def basic_augment(x: Tensor, *, crop_padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding and random horizontal flip, each image its own draw.

    x: uint8 (N, C, H, W) on any device; `generator` is a CPU generator, so runs are
    reproducible whatever the device. Vectorized: crop and flip together are one gather of
    per-image pixel indices into the padded batch. Returns x itself when there is nothing to do.
    """
    if crop_padding < 0:
        raise ConfigError(f"crop padding {crop_padding} must be >= 0")
    if crop_padding == 0 and not flip:
        return x
    n, c, h, w = x.shape
    p = crop_padding
    # Per image: window offsets into the padded image (0..2p, so p means "not shifted") and
    # whether to mirror. Only these 3 numbers per image cross to the device.
    draws = torch.randint(0, 2 * p + 1, (n, 3), generator=generator)
    draws[:, 2] = (torch.rand(n, generator=generator) < 0.5) if flip else 0
    dy, dx, flipped = to_device(draws, x.device).unbind(1)
    rows = dy.unsqueeze(1) + torch.arange(h, device=x.device)
    cols = dx.unsqueeze(1) + torch.arange(w, device=x.device)
    cols = torch.where(flipped.unsqueeze(1).bool(), cols.flip(1), cols)  # the window read right to left
    # Flat (row, col) indices into each padded image: one gather is ~3x faster than a gather
    # of rows then one of columns.
    index = (rows.unsqueeze(2) * (w + 2 * p) + cols.unsqueeze(1)).view(n, 1, h * w)
    padded = F.pad(x, (p, p, p, p)) if p else x
    return padded.reshape(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)
