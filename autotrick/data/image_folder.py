"""An image folder (`imagefolder:DIR`: DIR/train/<class>/*, DIR/val/<class>/*) as a listing of its
files and class indices, listed once per process, less its unreadable files under
--skip-bad-images (autotrick.data.bad_images); both the in-memory and the streamed path read it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from autotrick.data.bad_images import readable_files
from autotrick.errors import DataError


@dataclass(frozen=True)
class FolderListing:
    """An image folder's files and class indices, listed once per process."""

    classes: list[str]
    train: list[tuple[str, int]]  # (path, class index)
    val: list[tuple[str, int]]


@functools.lru_cache(maxsize=4)
def folder_listing(folder: str) -> FolderListing:
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
    check_classes(name, len({label for _, label in train}))
    return FolderListing(classes, train, val)


def image_files(folder: str, skip_bad_images: bool) -> FolderListing:
    """The folder's listing, without its unreadable files when `skip_bad_images` (a scan)."""
    listing = folder_listing(folder)
    if not skip_bad_images:
        return listing
    readable = readable_files(folder, tuple(listing.train), tuple(listing.val))
    return FolderListing(listing.classes, readable.train, readable.val)


def skipped_images(spec: str) -> tuple[str, ...]:
    """The files --skip-bad-images leaves out of `spec` (absolute): only an image folder has any."""
    folder = spec.removeprefix("imagefolder:")
    if folder == spec or not folder:
        return ()
    listing = folder_listing(folder)
    return readable_files(folder, tuple(listing.train), tuple(listing.val)).skipped


def check_classes(name: str, classes: int) -> None:
    """Training images all of one class leave nothing to learn (and score accuracy 1.0)."""
    if classes < 2:
        raise DataError(f"data set '{name}': its training images are all of one class; a classifier needs "
                        "at least two")
