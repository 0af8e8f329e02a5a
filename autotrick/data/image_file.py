"""One image file, decoded: the reader both the in-memory and the streamed paths use. A file that
cannot be decoded (corrupt, truncated, not an image, a decompression bomb) is one DataError that
names it."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from autotrick.errors import DataError


def read_image_file(path: str, size: int, name: str) -> np.ndarray:
    """One image file as uint8 (size, size, 3) RGB, resized bilinearly (PIL): both the in-memory
    and the streamed path read files with this, so they see the same pixels."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: a bomb is refused, not decoded
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return np.array(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))  # writable
    except _UNREADABLE as error:
        why = " ".join(str(error).replace(f" '{path}'", "").split()) or type(error).__name__
        raise DataError(f"{name}: cannot read image {path} ({why}): replace or remove it, "
                        "or pass --skip-bad-images") from error


# What PIL raises for a file it cannot decode: not an image or truncated (OSError), a damaged
# header (SyntaxError, ValueError, EOFError), more pixels than PIL.Image.MAX_IMAGE_PIXELS allows.
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
               Image.DecompressionBombWarning)
