"""Data sets streamed through a torch DataLoader, for data that does not fit the memory budget
(autotrick.data.placement): image folders and the user's lazy datasets.

Worker processes (the trial's CPUs, kept for the whole trial) read and decode the images; batches
come back in pinned memory and cross to the GPU asynchronously. JPEG folders on CUDA are decoded
on the GPU (`torchvision.io.decode_jpeg(..., device="cuda")`, nvJPEG): the workers only read the
files' bytes, and the images are resized on the GPU. Everything else is decoded by the workers,
with the same reader as the in-memory path (autotrick.data.sources.read_image_file), so both see
the same pixels. Augmentation runs on the device, batched, as for data in memory.

The epoch's order is drawn by the trainer (the same draw as in memory) and handed to the loader as
its batches of indices, so a streamed run sees the same batches in the same order as an in-memory
run. The normalization's mean and std come from up to STATS_SAMPLE training images (all of them
when there are fewer), read once per process.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from autotrick.data.image_folder import image_files
from autotrick.data.sources import (
    DataSize,
    channel_histograms,
    read_image_file,
    resize_uint8,
    sample_image,
    stats_from_histograms,
    user_splits,
)
from autotrick.errors import ConfigError, DataError

STATS_SAMPLE = 2048
JPEG_SUFFIXES = (".jpg", ".jpeg")


class _FolderImages(Dataset[tuple[Any, int]]):
    """An image folder's train then val files: decoded uint8 (3, S, S) images, or (raw=True) the
    files' bytes for the GPU to decode."""

    def __init__(self, folder: str, side: int, *, raw: bool, skip_bad_images: bool) -> None:
        listing = image_files(folder, skip_bad_images)
        self.samples = listing.train + listing.val
        self.name, self.side, self.raw = f"imagefolder:{folder}", side, raw

    def __len__(self) -> int:
        return len(self.samples)

    def train_labels(self, train_count: int) -> list[int]:
        return [label for _, label in self.samples[:train_count]]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        if self.raw:
            from torchvision.io import read_file

            return read_file(path), label
        return torch.from_numpy(read_image_file(path, self.side, self.name)).permute(2, 0, 1), label


class _UserImages(Dataset[tuple[Tensor, int]]):
    """The user's train then val datasets, item by item as uint8 (C, H, W) images."""

    def __init__(self, spec: str, data_dir: str | None) -> None:
        self.spec = spec
        self.train, self.val = user_splits(spec, data_dir)

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    def train_labels(self, train_count: int) -> list[int]:
        targets = getattr(self.train, "targets", None)
        if targets is None:  # reading every label would decode every image
            raise ConfigError(f"data set '{self.spec}': loss.alpha weighs classes by their training counts; give "
                              "the training dataset a `targets` attribute (its labels) to stream it with loss.alpha")
        return [int(label) for label in targets]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        split, which = (self.train, "train") if index < len(self.train) else (self.val, "val")
        offset = index if split is self.train else index - len(self.train)
        sample = split[offset]
        return sample_image(sample, self.spec, which, offset, None), int(sample[1])


class _Batches(torch.utils.data.Sampler[list[int]]):
    """The loader's batch sampler: the index lists of the pass about to start."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _raw_collate(batch: Sequence[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    return [data for data, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.int64)


class StreamFeed:
    """A Feed reading the data set through a DataLoader with persistent workers."""

    mode = "stream"

    def __init__(self, size: DataSize, dataset: Dataset[Any], *, device: torch.device, workers: int,
                 gpu_decode: bool) -> None:
        self.size, self.device, self.gpu_decode = size, device, gpu_decode
        self.crop_padding, self.flip = 0, False  # as the in-memory image folders and user data sets
        self._batches = _Batches()
        # generator: the workers' seeds come from it, not from torch's global one, which the trial seeded
        self.loader = DataLoader(dataset, batch_sampler=self._batches, num_workers=workers,
                                 generator=torch.Generator().manual_seed(0),
                                 persistent_workers=True, pin_memory=device.type == "cuda" and not gpu_decode,
                                 collate_fn=_raw_collate if gpu_decode else None)
        self.mean, self.std = _stats(size.name, self)

    def train_batches(self, order: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        indices = order.tolist()  # once per epoch: the loader's workers take Python indices
        return self._pass([indices[i:i + batch_size] for i in range(0, len(indices), batch_size)])

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        first, end, step = self.size.train_count, self.size.train_count + self.size.val_count, self.size.val_batch_size
        return self._pass([list(range(i, min(i + step, end))) for i in range(first, end, step)])

    def class_counts(self) -> Tensor:
        labels = self.loader.dataset.train_labels(self.size.train_count)  # type: ignore[attr-defined]
        return torch.bincount(torch.as_tensor(labels, dtype=torch.int64), minlength=self.size.num_classes)

    def _pass(self, batches: list[list[int]]) -> Iterator[tuple[Tensor, Tensor]]:
        self._batches.batches = batches  # read when the pass's iterator starts, below
        try:
            for images, labels in self.loader:
                if self.gpu_decode:
                    images = decode_on_gpu(images, self.size.image_size[0], self.device)
                else:
                    images = images.to(self.device, non_blocking=True)
                yield images, labels.to(self.device, non_blocking=True)
        except DataError as error:  # a file a worker could not read: one line, as in memory
            raise DataError(_worker_message(error)) from None


def _worker_message(error: DataError) -> str:
    """The worker's own message: torch re-raises a worker's exception with the worker's whole
    traceback as its message, "Caught DataError in DataLoader worker process 0. Original Traceback
    ...", which ends in the line that says it."""
    lines = str(error).strip().splitlines()
    return lines[-1].removeprefix(f"{DataError.__module__}.{DataError.__qualname__}: ") if lines else ""


@functools.lru_cache(maxsize=2)
def open_stream(size: DataSize, data_dir: str | None, *, device: torch.device, workers: int,
                skip_bad_images: bool = False) -> StreamFeed:
    """A StreamFeed for an image folder or a user's lazy dataset (`size` from describe_data).
    Kept for the process's later trials, as data held in memory is: its loader's workers are
    persistent, and starting them again would cost every trial (0.3 to 1 s on a small folder)."""
    if size.name.startswith("imagefolder:"):
        folder = size.name.removeprefix("imagefolder:")
        listing = image_files(folder, skip_bad_images)
        jpeg_only = all(Path(path).suffix.lower() in JPEG_SUFFIXES for path, _ in listing.train + listing.val)
        gpu_decode = device.type == "cuda" and jpeg_only and gpu_jpeg_decoding(device)
        dataset: Dataset[Any] = _FolderImages(folder, size.image_size[0], raw=gpu_decode,
                                              skip_bad_images=skip_bad_images)
        return StreamFeed(size, dataset, device=device, workers=workers, gpu_decode=gpu_decode)
    return StreamFeed(size, _UserImages(size.name, data_dir), device=device, workers=workers, gpu_decode=False)


def decode_on_gpu(raw: list[Tensor], side: int, device: torch.device) -> Tensor:
    """JPEG bytes -> uint8 (N, 3, side, side) on `device`: nvJPEG's batched decode, then a
    bilinear antialiased resize per image (PIL's BILINEAR, which the CPU path uses, antialiases too)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision 0.29 points to TorchCodec on every call
        images = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return torch.cat([resize_uint8(image[None], side) for image in images])  # sizes differ: one by one


@functools.cache
def gpu_jpeg_decoding(device: torch.device) -> bool:
    """Whether this torchvision decodes JPEG on `device` (built with nvJPEG): tried once."""
    try:
        from torchvision.io import encode_jpeg

        probe = encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8))
        decode_on_gpu([probe], 8, device)
        return True
    except Exception:  # no nvJPEG in this build, or no usable GPU: the workers decode instead
        return False


_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def _stats(name: str, feed: StreamFeed) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of up to STATS_SAMPLE training images (a fixed draw), once per process."""
    if name not in _STATS:
        count = feed.size.train_count
        sample = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort().values
        counts = None
        for images, _ in feed.train_batches(sample, 256):
            batch = channel_histograms(images)
            counts = batch if counts is None else counts + batch
        assert counts is not None
        _STATS[name] = stats_from_histograms(counts)
    return _STATS[name]
