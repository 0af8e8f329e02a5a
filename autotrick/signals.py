"""SIGTERM (what `kill`, systemd, Kubernetes and Slurm send) and SIGHUP (a closed terminal or SSH
session) stop a search as Ctrl-C does: whatever handles SIGINT at that moment handles them
(Ray Tune's fit() stops its trials and returns; elsewhere Python raises KeyboardInterrupt), and
the exit code says which signal it was (128 + its number: 130, 143, 129)."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """While entered (in the main thread), SIGTERM and SIGHUP are handled as SIGINT."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._as_interrupt)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _as_interrupt(self, number: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(number)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored or at its default: stop all the same
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, the shell's convention; Ctrl-C's 130 when none of ours came."""
        return 128 + (self.received or signal.SIGINT)

    @property
    def name(self) -> str:
        return (self.received or signal.SIGINT).name
