"""Files that are never seen half-written: a kill or a full disk at any byte leaves the old
file or the new one, never a torn mix (write a temporary file beside it, flush it to the disk,
then rename it over the target: rename is atomic on POSIX file systems)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# What a full disk, a read-only file system or a permission raises: the driver's write failures
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_bytes_atomically(path, text.encode())


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    fd, temporary = _temporary_beside(path, prefix=f".{path.name}.", suffix=".tmp")
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


@contextlib.contextmanager
def file_written_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` for a writer that takes a file name (an exporter): flushed
    to the disk and renamed over `path` when the block ends, removed if it raises. A failed write
    is re-raised naming `path`, not the temporary file."""
    path = Path(path)
    fd, name = _temporary_beside(path, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, _mode(path))
        with temporary.open("rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        failed = write_failure(error)
        if failed is not None and failed.filename in (None, name, str(temporary)):
            raise OSError(failed.errno, failed.strerror, str(path)) from error
        raise


def write_failure(error: BaseException) -> OSError | None:
    """The full disk, read-only file system or permission behind `error` (a library that wraps the
    OSError it met: its cause or context), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _temporary_beside(path: Path, *, prefix: str, suffix: str) -> tuple[int, str]:
    """mkstemp in `path`'s folder; a folder that refuses it (read-only, a permission, full) is said
    of `path`, the file meant, not of a random temporary name."""
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error


def _mode(path: Path) -> int:
    """The target's mode if it exists, else 0666 less the umask (what open() creates)."""
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_mode & 0o777
    return 0o666 & ~_UMASK


_UMASK = os.umask(0o022)  # read once, on import: reading it means setting it, which threads would race
os.umask(_UMASK)
