"""Reaching a Ray cluster, told apart from Ray itself: an address checked before anything starts
(commands/_search.py's validation), and Ray's native connection retries kept off the terminal."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator

from autotrick.errors import ConfigError, first_line

_PROBE_TIMEOUT_S = 10


def check_address(address: str) -> None:
    """A cluster address that nothing answers fails now, in one line: Ray itself would retry for
    many minutes. (A port that answers but is not Ray's fails in ray.init, bounded by
    autotrick.search._run's _CONNECT_ENV.) "auto" and "local" are Ray's own words, not addresses."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected HOST:PORT of a Ray cluster's head (e.g. 10.0.0.5:6379), "
                          "or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({first_line(error)}); start one "
                          "with `ray start --head`, or drop --address to start a local Ray") from None


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Ray's C++ core writes its connection retries straight to file descriptor 2 (a line every
    few seconds while a cluster does not answer); whether it connects is said by ray.init."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
