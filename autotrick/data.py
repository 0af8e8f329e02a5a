"""Data sets, materialized once as uint8 tensors, and the basic augmentation done on batches.

A trainer keeps `ImageData`'s tensors on its device and slices batches from them: no DataLoader,
no per-image PIL work on the hot path. Normalization and the basic crop and flip are batched
tensor ops that run wherever the batch is.

Specs for `load_data`:
  digits                  scikit-learn's 8x8 digits (ships inside sklearn; the default)
  cifar10, cifar100       torchvision's on-disk layout under data_dir (never downloaded)
  mnist, fashion_mnist    idem
  imagefolder:DIR         DIR/train/<class>/*.png|jpg and DIR/val/<class>/*, resized square
  module:function         the user's own function returning (train, val) datasets; called
  path/file.py:function   with data_dir= (absolute, or None) when its signature takes it
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from autotrick.entrypoints import (
    FORMS,
    absolute_spec,
    accepted_kwargs,
    check_callable_with,
    is_callable_spec,
    load_callable,
)
from autotrick.errors import ConfigError, DataError

DIGITS_TRAIN = 1437  # of 1797: the reference benchmark's split, kept identical
IMAGEFOLDER_SIZE = 32


@dataclass(frozen=True)
class ImageData:
    """Both splits as tensors. Loaders may cache and share these tensors across calls: treat
    them as read-only (copy before changing them in place)."""

    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    val_x: Tensor  # uint8 (M, C, H, W)
    val_y: Tensor  # int64 (M,)
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units, from the training split
    std: tuple[float, ...]
    crop_padding: int  # basic augmentation: random crop with this zero padding (0 = none)
    flip: bool  # basic augmentation: random horizontal flip
    name: str

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train_x.shape[2], self.train_x.shape[3]


@dataclass(frozen=True)
class _OnDisk:
    """A torchvision data set read from data_dir: where it lives and how to augment it."""

    folder: str  # what must exist under data_dir
    what: str  # what to put there, for the error message
    crop_padding: int
    flip: bool


_ON_DISK: dict[str, _OnDisk] = {
    "cifar10": _OnDisk("cifar-10-batches-py", "the extracted cifar-10-batches-py/ folder (from "
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)", 4, True),
    "cifar100": _OnDisk("cifar-100-python", "the extracted cifar-100-python/ folder (from "
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)", 4, True),
    # Flipping changes what a digit is; clothes are left-right symmetric enough to flip.
    "mnist": _OnDisk("MNIST", "MNIST/raw/ with the four unzipped idx files (train-images-idx3-ubyte, "
                     "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte from "
                     "https://ossci-datasets.s3.amazonaws.com/mnist/)", 2, False),
    "fashion_mnist": _OnDisk("FashionMNIST", "FashionMNIST/raw/ with the four unzipped idx files "
                             "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                             "t10k-labels-idx1-ubyte from http://fashion-mnist.s3-website.eu-central-1"
                             ".amazonaws.com/)", 2, True),
}

DATASETS: tuple[str, ...] = ("digits", *_ON_DISK)
EXPECTED = f"expected one of {', '.join(DATASETS)}, imagefolder:DIR, {FORMS}"


def load_data(spec: str, data_dir: str | Path | None = None, *, image_size: int | None = None) -> ImageData:
    """Load the data set `spec` names (see the module docstring), resized to image_size x
    image_size when given (image folders default to 32)."""
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image size {image_size} must be a positive number of pixels")
    root = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None
    return _load(absolute_data_spec(spec), root, image_size)


def absolute_data_spec(spec: str) -> str:
    """`spec` with its folder or file made absolute, so that it names the same data from any
    working directory (Ray runs trials in their own folders) and caches under one key."""
    if spec.startswith("imagefolder:") and spec != "imagefolder:":
        return f"imagefolder:{Path(spec.removeprefix('imagefolder:')).expanduser().resolve()}"
    return absolute_spec(spec)


@functools.lru_cache(maxsize=4)
def _load(spec: str, root: str | None, image_size: int | None) -> ImageData:
    # Cached per process: search workers call load_data for every trial, and the data should be
    # read and decoded once per worker, not once per trial. Failures are not cached.
    if spec == "digits":
        return _resized(_digits(), image_size)
    if spec in _ON_DISK:
        return _resized(_on_disk(spec, root), image_size)
    if spec.startswith("imagefolder:"):
        folder = spec.removeprefix("imagefolder:")
        if not folder:
            raise ConfigError(f"data set '{spec}': name the folder, as imagefolder:DIR")
        return _image_folder(folder, image_size or IMAGEFOLDER_SIZE)
    if is_callable_spec(spec):
        return _resized(_from_function(spec, root), image_size)
    raise ConfigError(f"unknown data set '{spec}'; {EXPECTED}")


# --- tensors on any device -------------------------------------------------------------------


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


def to_device(t: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":  # from pinned memory the copy is asynchronous: no stall every batch
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# --- built-in data sets ----------------------------------------------------------------------


def _digits() -> ImageData:
    images, target = _digits_arrays()
    x = torch.from_numpy(np.round(images * (255.0 / 16.0))).to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:DIGITS_TRAIN], order[DIGITS_TRAIN:]
    return _image_data("digits", x[train], y[train], x[val], y[val], crop_padding=1, flip=False)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """load_digits' (1797, 8, 8) images in 0..16 and targets. Importing sklearn.datasets takes
    ~1.3 s of a search worker's start for a 25 ms read, so the CSV that load_digits parses is
    read directly when it is where sklearn keeps it."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    locations = spec.submodule_search_locations if spec else None
    csv = Path(locations[0], "datasets", "data", "digits.csv.gz") if locations else None
    if csv is not None and csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _on_disk(name: str, root: str | None) -> ImageData:
    from torchvision import datasets

    info = _ON_DISK[name]
    if root is not None and Path(root).name == info.folder:
        root = str(Path(root).parent)  # the user pointed at the data set's own folder: accept it
    if root is None:
        raise DataError(f"{name}: no data folder given: pass --data-dir, a folder holding {info.what}; "
                        "autotrick never downloads")
    if not (Path(root) / info.folder).is_dir():
        raise DataError(f"{name}: no data under {root}: put {info.what} in {root}, or pass --data-dir; "
                        "autotrick never downloads")
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "mnist": datasets.MNIST,
           "fashion_mnist": datasets.FashionMNIST}[name]
    try:
        train, val = (cls(root, train=split, download=False) for split in (True, False))
    except Exception as error:  # only reading files happens here: any failure is unreadable data
        # torchvision checks file presence (and checksums for CIFAR) and says to download.
        raise DataError(f"{name}: cannot read {Path(root) / info.folder}: {type(error).__name__}: "
                        f"{' '.join(str(error).split())}; put {info.what} there") from error
    splits = [_as_nchw(ds.data) for ds in (train, val)]  # straight from the arrays, no PIL
    labels = [torch.as_tensor(ds.targets, dtype=torch.int64) for ds in (train, val)]
    return _image_data(name, splits[0], labels[0], splits[1], labels[1], crop_padding=info.crop_padding,
                       flip=info.flip)


def _as_nchw(data: Any) -> Tensor:
    """CIFAR's numpy (N, H, W, C) or MNIST's tensor (N, H, W), as uint8 (N, C, H, W)."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous()


def _image_folder(folder: str, size: int) -> ImageData:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    name = f"imagefolder:{folder}"
    layout = f"put images in {folder}/train/<class>/ and {folder}/val/<class>/ (png, jpg, ...)"
    for split in ("train", "val"):
        if not (Path(folder) / split).is_dir():
            raise DataError(f"{name}: no folder {Path(folder) / split}; {layout}")
    try:
        classes, class_to_idx = find_classes(f"{folder}/train")
        train = make_dataset(f"{folder}/train", class_to_idx, IMG_EXTENSIONS)
        # The validation split uses the training split's class indices; a class it lacks is fine.
        val = make_dataset(f"{folder}/val", class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as error:
        raise DataError(f"{name}: {' '.join(str(error).split())}; {layout}") from error
    unknown = sorted({p.name for p in Path(folder, "val").iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise DataError(f"{name}: val classes {', '.join(unknown)} have no folder in {folder}/train; "
                        "every val class needs training images")
    if not val:
        raise DataError(f"{name}: no images in {folder}/val/<class>/; {layout}")

    def read(samples: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(samples):
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    images[i] = np.asarray(rgb)
            except OSError as error:
                raise DataError(f"{name}: cannot read image {path}: {error}") from error
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels

    (train_x, train_y), (val_x, val_y) = read(train), read(val)
    return _image_data(name, train_x, train_y, val_x, val_y, crop_padding=0, flip=False,
                       num_classes=len(classes))


# --- the user's own function -----------------------------------------------------------------

_RETURNS = ("(train, val), each a torch Dataset of (image, label) with PIL or (C, H, W) tensor "
            "images, or a tuple of tensors (x, y)")


def _from_function(spec: str, data_dir: str | None) -> ImageData:
    fn = load_callable(spec, "data set")
    kwargs = accepted_kwargs(fn, {"data_dir": data_dir})
    check_callable_with(fn, kwargs, spec, "data set", "fn() or fn(data_dir=...)")
    result = fn(**kwargs)
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ConfigError(f"data set '{spec}': the function returned {type(result).__name__}; "
                          f"expected {_RETURNS}")
    (train_x, train_y), (val_x, val_y) = (_materialize(split, spec, which)
                                          for split, which in zip(result, ("train", "val"), strict=True))
    return _image_data(spec, train_x, train_y, val_x, val_y, crop_padding=0, flip=False)


def _materialize(split: Any, spec: str, which: str) -> tuple[Tensor, Tensor]:
    """One split as uint8 (N, C, H, W) images and int64 labels."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"data set '{spec}': {which} split: {problem}; expected {_RETURNS}")

    if isinstance(split, tuple | list) and len(split) == 2 and isinstance(split[0], Tensor | np.ndarray):
        x, y = torch.as_tensor(split[0]), torch.as_tensor(split[1])
        if x.ndim == 3:  # (N, H, W): single-channel images
            x = x.unsqueeze(1)
    elif isinstance(split, torch.utils.data.TensorDataset) and len(split.tensors) == 2:
        x, y = split.tensors  # already stacked: skip the per-sample loop
        if x.ndim == 3:
            x = x.unsqueeze(1)
    elif hasattr(split, "__getitem__") and hasattr(split, "__len__"):
        if len(split) == 0:
            raise bad("it is empty")
        images, labels = [], []
        for i in range(len(split)):
            sample = split[i]
            if not (isinstance(sample, tuple | list) and len(sample) == 2):
                raise bad(f"item {i} is {type(sample).__name__}, not an (image, label) pair")
            images.append(_image_tensor(sample[0], bad))
            try:
                labels.append(int(sample[1]))
            except (TypeError, ValueError, RuntimeError):  # e.g. a one-hot vector
                raise bad(f"item {i}'s label {sample[1]!r} is not an integer class index") from None
        if len({tuple(im.shape) for im in images}) > 1:
            raise bad("its images differ in size or channels; resize them to one size in the function")
        x, y = torch.stack(images), torch.tensor(labels, dtype=torch.int64)
    else:
        raise bad(f"got {type(split).__name__}")
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise bad(f"images {tuple(x.shape)} and labels {tuple(y.shape)} are not (N, C, H, W) and (N,)")
    if y.is_floating_point() or y.is_complex() or (y < 0).any():
        raise bad("labels must be integers >= 0")
    return _to_uint8(x, bad), y.long()


def _image_tensor(image: Any, bad: Any) -> Tensor:
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        array = torch.from_numpy(np.array(image))
        return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)
    if isinstance(image, Tensor | np.ndarray):
        tensor = torch.as_tensor(image)
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim == 3:
            return tensor
    raise bad(f"an image is {type(image).__name__} {tuple(getattr(image, 'shape', ()))}, "
              "not a PIL image or a (C, H, W) tensor")


def _to_uint8(x: Tensor, bad: Any) -> Tensor:
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.is_floating_point():
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:  # most often images already normalized: autotrick normalizes itself
            raise bad(f"float images must be in [0, 1] (unnormalized), got values in [{low:.3g}, {high:.3g}]")
        return (x * 255).round().to(torch.uint8)
    if x.is_complex() or x.dtype == torch.bool or int(x.min()) < 0 or int(x.max()) > 255:
        raise bad(f"{x.dtype} images must hold 0..255")
    return x.to(torch.uint8)


# --- shared ----------------------------------------------------------------------------------


def _image_data(name: str, train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, *,
                crop_padding: int, flip: bool, num_classes: int | None = None) -> ImageData:
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ConfigError(f"data set '{name}': train images are {tuple(train_x.shape[1:])} but val images "
                          f"are {tuple(val_x.shape[1:])}; both splits need one image shape")
    mean, std = _channel_stats(train_x)
    if num_classes is None:
        num_classes = int(max(train_y.max(), val_y.max())) + 1
    return ImageData(train_x, train_y, val_x, val_y, num_classes, mean, std, crop_padding, flip, name)


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units, from a 256-bin histogram per channel:
    no float copy of the whole training set (600 MB for CIFAR as float32)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(x.shape[1]):
        counts = torch.bincount(x[:, channel].reshape(-1), minlength=256).double()
        mean = float((counts * levels).sum() / counts.sum())
        var = float((counts * (levels - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)  # a constant channel: avoid dividing by zero
    return tuple(means), tuple(stds)


def _resized(data: ImageData, size: int | None) -> ImageData:
    """`data` with both splits resized to size x size (bilinear, antialiased); as is when None."""
    if size is None or data.image_size == (size, size):
        return data

    def resize(x: Tensor) -> Tensor:
        out = [F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
               for chunk in x.split(4096)]  # in chunks: a float copy of all of CIFAR at 224 is huge
        return torch.cat(out)

    train_x, val_x = resize(data.train_x), resize(data.val_x)
    return _image_data(data.name, train_x, data.train_y, val_x, data.val_y, crop_padding=data.crop_padding,
                       flip=data.flip, num_classes=data.num_classes)
