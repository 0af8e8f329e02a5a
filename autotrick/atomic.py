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
        os.fchmod(fd, _mode(path))  # mkstemp makes 0600 whatever the umask: keep what open() would give
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None:  # a write or fsync names no file: the one meant
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    return path


def _mode(path: Path) -> int:
    """The target's mode if it exists, else 0666 less the umask (what open() creates)."""
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_mode & 0o777
    return 0o666 & ~_UMASK


_UMASK = os.umask(0o022)  # read once, on import: reading it means setting it, which threads would race
os.umask(_UMASK)
