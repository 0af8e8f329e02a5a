"""How a data set's batches reach the trainer's device: a `Feed` hands out uint8 image batches and
int64 labels already on the device, from memory or streamed (autotrick.data.stream).

In memory, the data set lives on the device as uint8 tensors (moved once per process) and a batch
is one gather by a slice of the epoch's order: for data that fits, this is what makes small
trials fast, on the CPU and on a GPU. Nothing here reads a tensor back to the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from autotrick.data.placement import plan_data
from autotrick.data.sources import DataSize, ImageData, describe_data, load_data
from autotrick.device import to_device


class Feed(Protocol):
    """Batches of one data set on the trainer's device."""

    size: DataSize
    mean: tuple[float, ...]  # per channel, in [0, 1] units, from the training split
    std: tuple[float, ...]
    crop_padding: int  # basic augmentation: random crop with this zero padding (0 = none)
    flip: bool  # basic augmentation: random horizontal flip
    mode: str  # "memory" or "stream"

    def train_batches(self, order: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The training split in the order `order` (a CPU permutation), `batch_size` at a time."""
        ...

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The validation split, in order, size.val_batch_size at a time."""
        ...

    def class_counts(self) -> Tensor:
        """Training images per class (int64, on the CPU): what loss.alpha weighs classes by."""
        ...


@dataclass
class MemoryFeed:
    """The whole data set as uint8 tensors on the device."""

    data: ImageData
    device: torch.device
    mode: str = "memory"

    def __post_init__(self) -> None:
        self.size = DataSize(self.data.name, self.data.num_classes, self.data.in_channels, self.data.image_size,
                             len(self.data.train_y), len(self.data.val_y), streamable=False)
        self.mean, self.std = self.data.mean, self.data.std
        self.crop_padding, self.flip = self.data.crop_padding, self.data.flip

    def train_batches(self, order: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = to_device(order, self.device)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield self.data.train_x[index], self.data.train_y[index]

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        step = self.size.val_batch_size
        for start in range(0, len(self.data.val_y), step):
            yield self.data.val_x[start:start + step], self.data.val_y[start:start + step]

    def class_counts(self) -> Tensor:
        return torch.bincount(self.data.train_y.cpu(), minlength=self.size.num_classes)


def open_feed(spec: str, data_dir: str | None, *, device: torch.device, mode: str = "auto",
              workers: int | None = None, skip_bad_images: bool = False) -> Feed:
    """The data set `spec` fed to `device`: in memory or streamed as `mode` says (auto: by size,
    see autotrick.data.placement); a stream reads with `workers` processes (default: every core).
    `skip_bad_images`: an image folder's unreadable files are left out (autotrick.data.bad_images)."""
    if mode == "memory":
        return MemoryFeed(_on_device(spec, data_dir, device, skip_bad_images), device)
    size = describe_data(spec, data_dir, skip_bad_images=skip_bad_images)
    if plan_data(size, mode, device=str(device)).mode == "memory":
        return MemoryFeed(_on_device(spec, data_dir, device, skip_bad_images), device)
    from autotrick.data.stream import open_stream

    return open_stream(size, data_dir, device=device, workers=workers or os.cpu_count() or 1,
                       skip_bad_images=skip_bad_images)


def _on_device(spec: str, data_dir: str | None, device: torch.device, skip_bad_images: bool) -> ImageData:
    """The data set, on the device: loaded once per process (load_data caches), moved once."""
    data = load_data(spec, data_dir, skip_bad_images=skip_bad_images)
    if device.type == "cpu":
        return data
    key = (data.name, data_dir, str(device), skip_bad_images)
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = replace(data, train_x=data.train_x.to(device), train_y=data.train_y.to(device),
                                     val_x=data.val_x.to(device), val_y=data.val_y.to(device))
    return _DEVICE_CACHE[key]


_DEVICE_CACHE: dict[tuple[str, str | None, str, bool], ImageData] = {}
