"""Files that are never seen half-written: a kill or a full disk at any byte leaves the old
file or the new one, never a torn mix (write a temporary file beside it, flush it to the disk,
then rename it over the target: rename is atomic on POSIX file systems)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path
