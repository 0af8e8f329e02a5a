"""Where examples come from, materialized once as uint8 tensors (the in-memory path).

A trainer keeps `ImageData`'s tensors on its device and slices batches from them: no DataLoader,
no per-image PIL work on the hot path (the batched crop, flip and normalization are in
autotrick.augment.basic). `describe_data` tells a data set's shape and decoded size without
decoding it, where that is possible (image folders, the user's lazy datasets), so that a data set
too big for memory can be streamed instead (autotrick.data.stream).

Specs for `load_data`:
  digits                  scikit-learn's 8x8 digits (ships inside sklearn; the default)
  cifar10, cifar100       torchvision's on-disk layout under data_dir (never downloaded)
  mnist, fashion_mnist    idem
  synthetic:SHAPE[:N]     generated, learnable data of a known shape (autotrick.data.synthetic)
  imagefolder:DIR         DIR/train/<class>/*.png|jpg and DIR/val/<class>/*, resized square
  module:function         the user's own function returning (train, val) datasets; called
  path/file.py:function   with data_dir= (absolute, or None) when its signature takes it
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from autotrick.data import synthetic
from autotrick.data.image_file import read_image_file
from autotrick.data.image_folder import check_classes, image_files
from autotrick.data.size import DataSize
from autotrick.entrypoints import (
    FORMS,
    absolute_spec,
    accepted_kwargs,
    call_user_function,
    check_callable_with,
    is_callable_spec,
    load_callable,
)
from autotrick.errors import ConfigError, DataError, first_line

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

    dataset: str  # the torchvision.datasets class that reads it
    folder: str  # what must exist under data_dir
    what: str  # what to put there, for the error message
    crop_padding: int
    flip: bool


_ON_DISK: dict[str, _OnDisk] = {
    "cifar10": _OnDisk("CIFAR10", "cifar-10-batches-py", "the extracted cifar-10-batches-py/ folder (from "
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)", 4, True),
    "cifar100": _OnDisk("CIFAR100", "cifar-100-python", "the extracted cifar-100-python/ folder (from "
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz)", 4, True),
    # Flipping changes what a digit is; clothes are left-right symmetric enough to flip.
    "mnist": _OnDisk("MNIST", "MNIST", "MNIST/raw/ with the four unzipped idx files (train-images-idx3-ubyte, "
                     "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte from "
                     "https://ossci-datasets.s3.amazonaws.com/mnist/)", 2, False),
    "fashion_mnist": _OnDisk("FashionMNIST", "FashionMNIST", "FashionMNIST/raw/ with the four unzipped idx files "
                             "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                             "t10k-labels-idx1-ubyte from http://fashion-mnist.s3-website.eu-central-1"
                             ".amazonaws.com/)", 2, True),
}

DATASETS: tuple[str, ...] = ("digits", *_ON_DISK)
EXPECTED = f"expected one of {', '.join(DATASETS)}, synthetic:SHAPE, imagefolder:DIR, {FORMS}"


def load_data(spec: str, data_dir: str | Path | None = None, *, image_size: int | None = None,
              skip_bad_images: bool = False) -> ImageData:
    """Load the data set `spec` names (see the module docstring), resized to image_size x
    image_size when given (image folders default to 32); `skip_bad_images` leaves an image
    folder's unreadable files out (autotrick.data.bad_images) instead of failing on the first."""
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image size {image_size} must be a positive number of pixels")
    root = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None
    return _load(absolute_data_spec(spec), root, image_size, skip_bad_images)


def absolute_data_spec(spec: str) -> str:
    """`spec` with its folder or file made absolute, so that it names the same data from any
    working directory (Ray runs trials in their own folders) and caches under one key."""
    if spec.startswith("imagefolder:") and spec != "imagefolder:":
        return f"imagefolder:{Path(spec.removeprefix('imagefolder:')).expanduser().resolve()}"
    return absolute_spec(spec)


def describe_data(spec: str, data_dir: str | Path | None = None, *, image_size: int | None = None,
                  skip_bad_images: bool = False) -> DataSize:
    """The data set's shape, class count, sizes and whether it can stream. Decodes nothing for
    synthetic data, image folders (one listing) and the user's lazy datasets; the other sets are
    small and are loaded (and cached) as load_data would."""
    root = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None
    spec = absolute_data_spec(spec)
    if spec.startswith(synthetic.PREFIX):
        shape = synthetic.parse_synthetic(spec)
        size = (image_size, image_size) if image_size else (shape.height, shape.width)
        return DataSize(spec, shape.classes, shape.channels, size, shape.train, shape.val, streamable=False)
    if spec.startswith("imagefolder:") and spec != "imagefolder:":
        listing = image_files(spec.removeprefix("imagefolder:"), skip_bad_images)
        side = image_size or IMAGEFOLDER_SIZE
        return DataSize(spec, len(listing.classes), 3, (side, side), len(listing.train), len(listing.val),
                        streamable=True)
    if is_callable_spec(spec):
        train, val = user_splits(spec, root)
        classes = lazy_class_count(train, val)
        if classes is not None:
            check_classes(spec, classes)
            first = sample_image(train[0], spec, "train", 0, image_size)
            return DataSize(spec, classes, first.shape[0], (first.shape[1], first.shape[2]), len(train), len(val),
                            streamable=True)
    data = load_data(spec, data_dir, image_size=image_size, skip_bad_images=skip_bad_images)
    return DataSize(spec, data.num_classes, data.in_channels, data.image_size, len(data.train_y), len(data.val_y),
                    streamable=False)


@functools.lru_cache(maxsize=4)
def _load(spec: str, root: str | None, image_size: int | None, skip_bad_images: bool) -> ImageData:
    # Cached per process: search workers call load_data for every trial, and the data should be
    # read and decoded once per worker, not once per trial. Failures are not cached.
    if spec == "digits":
        return _resized(_digits(), image_size)
    if spec.startswith(synthetic.PREFIX):
        train_x, train_y, val_x, val_y = synthetic.synthetic_splits(spec)
        classes = synthetic.parse_synthetic(spec).classes
        return _resized(_image_data(spec, train_x, train_y, val_x, val_y, crop_padding=0, flip=False,
                                    num_classes=classes), image_size)
    if spec in _ON_DISK:
        return _resized(_on_disk(spec, root), image_size)
    if spec.startswith("imagefolder:"):
        folder = spec.removeprefix("imagefolder:")
        if not folder:
            raise ConfigError(f"data set '{spec}': name the folder, as imagefolder:DIR")
        return _image_folder(folder, image_size or IMAGEFOLDER_SIZE, skip_bad_images)
    if is_callable_spec(spec):
        return _resized(_from_function(spec, root), image_size)
    raise ConfigError(f"unknown data set '{spec}'; {EXPECTED}")


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
    cls = getattr(datasets, info.dataset)
    try:
        train, val = (cls(root, train=split, download=False) for split in (True, False))
    except Exception as error:  # only reading files happens here: any failure is unreadable data
        # torchvision checks file presence (and checksums for CIFAR) and says to download.
        raise DataError(f"{name}: cannot read {Path(root) / info.folder}: {first_line(error)}; "
                        f"put {info.what} there") from error
    splits = [_as_nchw(ds.data) for ds in (train, val)]  # straight from the arrays, no PIL
    labels = [torch.as_tensor(ds.targets, dtype=torch.int64) for ds in (train, val)]
    return _image_data(name, splits[0], labels[0], splits[1], labels[1], crop_padding=info.crop_padding,
                       flip=info.flip)


def _as_nchw(data: Any) -> Tensor:
    """CIFAR's numpy (N, H, W, C) or MNIST's tensor (N, H, W), as uint8 (N, C, H, W)."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous()


def _image_folder(folder: str, size: int, skip_bad_images: bool) -> ImageData:
    name = f"imagefolder:{folder}"
    listing = image_files(folder, skip_bad_images)

    def read(samples: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(samples):
            images[i] = read_image_file(path, size, name)
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels

    (train_x, train_y), (val_x, val_y) = read(listing.train), read(listing.val)
    return _image_data(name, train_x, train_y, val_x, val_y, crop_padding=0, flip=False,
                       num_classes=len(listing.classes))


# --- the user's own function -----------------------------------------------------------------

_RETURNS = ("(train, val), each a torch Dataset of (image, label) with PIL or (C, H, W) tensor "
            "images, or a tuple of tensors (x, y)")


@functools.lru_cache(maxsize=4)
def user_splits(spec: str, data_dir: str | None) -> tuple[Any, Any]:
    """The user's function called once per process: its (train, val) as it returned them."""
    fn = load_callable(spec, "data set")
    kwargs = accepted_kwargs(fn, {"data_dir": data_dir})
    check_callable_with(fn, kwargs, spec, "data set", "fn() or fn(data_dir=...)")
    result = call_user_function(fn, kwargs, spec, "data set")
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ConfigError(f"data set '{spec}': the function returned {type(result).__name__}; "
                          f"expected {_RETURNS}")
    return result[0], result[1]


def _from_function(spec: str, data_dir: str | None) -> ImageData:
    splits = user_splits(spec, data_dir)
    (train_x, train_y), (val_x, val_y) = (_materialize(split, spec, which) for split, which
                                          in zip(splits, ("train", "val"), strict=True))
    # the class count a stream of the same data set gets (its `classes`), so both modes build one head
    return _image_data(spec, train_x, train_y, val_x, val_y, crop_padding=0, flip=False,
                       num_classes=lazy_class_count(*splits))


def _is_lazy(split: Any) -> bool:
    """A dataset read item by item (not tensors already in memory)."""
    if isinstance(split, tuple | list) and len(split) == 2 and isinstance(split[0], Tensor | np.ndarray):
        return False
    if isinstance(split, torch.utils.data.TensorDataset):
        return False
    return hasattr(split, "__getitem__") and hasattr(split, "__len__") and len(split) > 0


def lazy_class_count(train: Any, val: Any) -> int | None:
    """The class count of lazy datasets that tell it without being read (torchvision's `classes`
    or `targets`); None when they are not lazy or do not tell it (they are then loaded whole)."""
    if not (_is_lazy(train) and _is_lazy(val)):
        return None
    classes = getattr(train, "classes", None)
    if isinstance(classes, list | tuple) and classes:
        return len(classes)
    targets = [t for split in (train, val) for t in (getattr(split, "targets", None),) if t is not None]
    if len(targets) == 2 and all(len(t) for t in targets):
        return int(max(int(max(t)) for t in targets)) + 1
    return None


def sample_image(sample: Any, spec: str, which: str, index: int, image_size: int | None) -> Tensor:
    """One (image, label) item of the user's dataset as a uint8 (C, H, W) tensor, resized to
    image_size x image_size when given (as `_resized` resizes a whole split)."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"data set '{spec}': {which} split: {problem}; expected {_RETURNS}")

    if not (isinstance(sample, tuple | list) and len(sample) == 2):
        raise bad(f"item {index} is {type(sample).__name__}, not an (image, label) pair")
    image = _to_uint8(_image_tensor(sample[0], bad), bad)
    return image if image_size is None else resize_uint8(image[None], image_size)[0]


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
    check_classes(name, torch.unique(train_y).numel())
    mean, std = _channel_stats(train_x)
    if num_classes is None:
        num_classes = int(max(train_y.max(), val_y.max())) + 1
    return ImageData(train_x, train_y, val_x, val_y, num_classes, mean, std, crop_padding, flip, name)


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units, from a 256-bin histogram per channel:
    no float copy of the whole training set (600 MB for CIFAR as float32)."""
    return stats_from_histograms(channel_histograms(x))


def channel_histograms(x: Tensor) -> Tensor:
    """(C, 256) float64 counts of each uint8 level per channel of images (N, C, H, W)."""
    return torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256).double().cpu()
                        for c in range(x.shape[1])])


def stats_from_histograms(counts: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units from `channel_histograms` counts (summed over batches)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in counts:
        mean = float((channel * levels).sum() / channel.sum())
        var = float((channel * (levels - mean) ** 2).sum() / channel.sum())
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)  # a constant channel: avoid dividing by zero
    return tuple(means), tuple(stds)


def resize_uint8(images: Tensor, side: int) -> Tensor:
    """uint8 (N, C, H, W) images at side x side: bilinear, antialiased, rounded back to uint8 (the
    one resize of every path, in memory and streamed, so both see the same pixels)."""
    if tuple(images.shape[2:]) == (side, side):
        return images
    return (F.interpolate(images.float(), size=(side, side), mode="bilinear", antialias=True,
                          align_corners=False).round_().clamp_(0, 255).to(torch.uint8))


def _resized(data: ImageData, size: int | None) -> ImageData:
    """`data` with both splits resized to size x size (bilinear, antialiased); as is when None."""
    if size is None or data.image_size == (size, size):
        return data

    def resize(x: Tensor) -> Tensor:  # in chunks: a float copy of all of CIFAR at 224 is huge
        return torch.cat([resize_uint8(chunk, size) for chunk in x.split(4096)])

    train_x, val_x = resize(data.train_x), resize(data.val_x)
    return _image_data(data.name, train_x, data.train_y, val_x, data.val_y, crop_padding=data.crop_padding,
                       flip=data.flip, num_classes=data.num_classes)
