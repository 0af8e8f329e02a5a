"""--skip-bad-images: an image folder's files that cannot be read (corrupt, truncated, not an
image, a decompression bomb) are left out and counted instead of failing the run.

The folder is scanned once per process: every file is decoded with the reader both paths use
(autotrick.data.image_file), so what is skipped is exactly what would have failed, in memory and
streamed alike, and a stream's sizes (its train and val counts) are known before its first batch.
The scan costs one decode of every image on top of training's own (the in-memory path decodes
them again; a stream decodes them every epoch anyway).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from autotrick.data.image_file import read_image_file
from autotrick.errors import DataError

SCAN_SIDE = 8  # decoding is what can fail: the scan resizes to a small side, which costs nothing
NAMED = 3  # the line names the first few skipped files


@dataclass(frozen=True)
class Readable:
    """An image folder's files that decode, per split, and the ones that do not."""

    train: list[tuple[str, int]]  # (path, class index), as FolderListing
    val: list[tuple[str, int]]
    skipped: tuple[str, ...]  # paths, in listing order (train, then val)


@functools.lru_cache(maxsize=4)
def readable_files(folder: str, train_files: tuple[tuple[str, int], ...],
                   val_files: tuple[tuple[str, int], ...]) -> Readable:
    """The files of `folder` (an image folder; its listing, per split, as (path, class index)) that
    decode: scanned once per process."""
    name, skipped = f"imagefolder:{folder}", []

    def keep(samples: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
        kept = []
        for path, label in samples:
            try:
                read_image_file(path, SCAN_SIDE, name)
                kept.append((path, label))
            except DataError:
                skipped.append(path)
        return kept

    train, val = keep(train_files), keep(val_files)
    if not train or not val:
        split = "train" if not train else "val"
        raise DataError(f"{name}: no readable images in {folder}/{split} (--skip-bad-images skipped all "
                        f"{len(skipped)} unreadable files); replace them")
    return Readable(train, val, tuple(skipped))


def skipped_line(skipped: tuple[str, ...]) -> str:
    """What a command says about the skipped files, in one line ("" when none was skipped)."""
    if not skipped:
        return ""
    named = ", ".join(skipped[:NAMED]) + (f" and {len(skipped) - NAMED} more" if len(skipped) > NAMED else "")
    return f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} (--skip-bad-images): {named}"
