"""The tracker: a search's calls enqueue MLflow writes and return at once; one background thread
writes them, so the search never waits on the store and the store never sees racing writers.
`import mlflow` (about 2 s) and creating a fresh sqlite store happen on that thread too, while Ray
starts.

A store that fails (a tracking server gone, a full disk, a read-only file) does not stop the search:
the journal, not MLflow, is what a search resumes from. The first failure is said once (`on_failure`);
the trials' writes are then skipped, and the search's end writes every record again (log_results
writes whatever run is missing), so a store that is back by then misses nothing. One still failing
at the end leaves `missed` set: the command exits non-zero, and `--resume` writes the rest."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from autotrick.errors import first_line
from autotrick.records import SearchInfo, SearchResult, TrialRecord
from autotrick.tracking._runs import SearchLog
from autotrick.tracking._store import TAG_REASON, is_server, resolve_tracking_uri, server_silence

if TYPE_CHECKING:
    import torch

    from autotrick.data import ImageData
    from autotrick.recipe import Recipe

_log = logging.getLogger(__name__)
_START_TIMEOUT_S = 60.0
_REASON_CHARS = 300  # MLflow's connection errors quote the whole urllib3 chain: the line stays readable


class SearchTracker:
    """Records a search in MLflow without slowing it: every call enqueues and returns at once."""

    def __init__(self, info: SearchInfo, *, tracking_uri: str | None = None, resume: bool = False,
                 dataset: ImageData | None = None, on_failure: Callable[[str], None] | None = None) -> None:
        """`dataset` (the search's data) is logged as the runs' dataset input, with its digest.
        `on_failure` is told, once, in one line, that the store failed and what happens next."""
        self.info = info
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self._jobs: queue.SimpleQueue[tuple[str, Callable[[SearchLog], None]] | None] = queue.SimpleQueue()
        self._log: SearchLog | None = None
        self._started = threading.Event()  # set once the parent run exists (or could not be made)
        self._errors: list[str] = []
        self._on_failure = on_failure
        self.failure: str | None = None  # the store's first failure, in one line
        self.missed = False  # records the store has not got: set by a failure, cleared by a catch-up
        self._seconds = 0.0
        self._closed = False
        self.registration_error: str | None = None  # why --register registered nothing
        self._thread = threading.Thread(target=self._write, args=(resume, dataset), name="autotrick-mlflow",
                                        daemon=True)
        self._thread.start()

    @property
    def parent_run_id(self) -> str | None:
        """The parent run's id; waits for the writer to make it (MLflow's import and the store's
        set-up run beside the search's start, and a short search can end first)."""
        self._started.wait(timeout=_START_TIMEOUT_S)
        return self._log.parent_id if self._log else None

    @property
    def logging_seconds(self) -> float:
        """CPU time the writer spent on MLflow, store set-up and plots included (its wall time
        says little: it runs at low priority, in the gaps the trials leave)."""
        return self._seconds

    def search_settled(self, info: SearchInfo) -> None:
        """The search once Ray is connected: what `info` settled (auto GPUs on a cluster: the trials'
        device) goes on the parent run, which opened before the device could be known."""
        self.info = info
        self._jobs.put((_TRIAL, lambda log: log.settle(info)))

    def trial_finished(self, record: TrialRecord) -> None:
        self._jobs.put((_TRIAL, lambda log: log.log_trial(record)))

    def search_finished(self, result: SearchResult, recipe: Recipe | None, *,
                        model: torch.nn.Module | None = None, register_name: str | None = None,
                        example_input: torch.Tensor | None = None, registered: TrialRecord | None = None,
                        alias: str | None = None) -> None:
        """The search's end: results and the recipe on the parent, the best child marked, the plots,
        the `registered` trial's `model` (default: the best's) registered as `register_name` (when
        both are given) under `alias` (default: champion), the parent ended."""
        # Separate jobs, so that a plot that fails still leaves the parent run ended.
        self._jobs.put((_CATCH_UP, lambda log: log.log_results(result, recipe)))
        self._jobs.put((_END, lambda log: log.log_plots(result)))
        best = registered or result.best
        if best is not None and register_name:
            self._jobs.put((_END, lambda log: self._register(log, best, register_name, model, example_input, result,
                                                              alias)))
        self._jobs.put((_END, lambda log: log.end(result.interrupted)))

    def _register(self, log: SearchLog, best: TrialRecord, name: str, model: torch.nn.Module | None,
                  example_input: torch.Tensor | None, result: SearchResult, alias: str | None) -> None:
        """Register the best model (under `alias`, default the champion); a failure (no model, a store
        that refuses it) is said on the parent run and kept in `registration_error`, which makes the
        search's exit code non-zero."""
        if model is None:
            why = f"trial {best.number}'s trained model did not reach the driver"
        else:
            try:
                log.register(best, name, model, example_input, result, alias=alias)
                return
            except Exception as error:
                why = first_line(error)
        self.registration_error = f"--register {name}: {why}; nothing registered"
        log.client.set_tag(log.parent_id, TAG_REASON, self.registration_error)

    def search_ended_early(self, status: str, reason: str) -> None:
        """The search stopped before it had results (interrupted: "KILLED"; an error: "FAILED"):
        the parent run ends with that status and the reason as its autotrick.reason tag."""
        self._jobs.put((_END, lambda log: log.end_early(status, reason)))  # writes no trial: no catch-up

    def close(self, timeout: float | None = None, *, warn: bool = True) -> None:
        """Wait for the queued writes; report a failed one as a warning (`warn`) rather than fail the
        search. Writes still running after `timeout` are left to the daemon thread, and `missed`."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.missed = True
            self.failure = self.failure or f"still writing after {timeout:g}s"
            if warn:
                warnings.warn(f"MLflow logging to {self.tracking_uri} still running after {timeout:g}s; "
                              "the runs may be incomplete", RuntimeWarning, stacklevel=2)
        for error in self._errors if warn else ():
            warnings.warn(f"MLflow logging to {self.tracking_uri} failed: {error}", RuntimeWarning,
                          stacklevel=2)
        self._errors.clear()

    def _write(self, resume: bool, dataset: ImageData | None) -> None:
        _lower_this_threads_priority()
        try:
            self._log = self._timed(lambda: SearchLog(self.info, self.tracking_uri, resume, dataset))
        finally:
            self._started.set()
        if self._log is None:
            self._failed()
        self._timed(_import_plotting)  # now, in the search's gaps, not after its last trial
        given_up = False  # the end's writes after a failed catch-up: each would only wait on the store again
        while (job := self._jobs.get()) is not None:
            phase, write = job
            if (self.missed and phase == _TRIAL) or (given_up and phase == _END):
                continue  # the catch-up writes these records again
            if self._log is None:  # without a parent run there is nothing to write to: --resume makes it
                continue
            if phase == _CATCH_UP and self.missed and is_server(self.tracking_uri) \
                    and server_silence(self.tracking_uri) is not None:
                given_up = True  # asked in seconds, not in MLflow's bounded but longer retries
                continue
            written = self._timed(partial(_written, write, self._log))
            if phase == _CATCH_UP:
                given_up = not written
                self.missed = not written
            if not written:
                self._failed()

    def _failed(self) -> None:
        """Remember the store failed; say so once."""
        self.missed = True
        if self.failure is None:
            self.failure = self._errors[-1][:_REASON_CHARS] if self._errors else "no parent run"
            if self._on_failure is not None:
                self._on_failure(f"MLflow store {self.tracking_uri} failed ({self.failure}): the trials go on; "
                                 "what it misses is written at the search's end, or by --resume once it is back")

    def _timed(self, job: Callable[[], Any]) -> Any:
        started = time.thread_time()
        try:
            return job()
        except Exception as exc:
            _log.debug("MLflow write failed", exc_info=True)
            self._errors.append(first_line(_root_cause(exc)))
            return None
        finally:
            self._seconds += time.thread_time() - started


def _root_cause(error: BaseException) -> BaseException:
    """What went wrong underneath: MLflow's exceptions open with its own words ("API request to
    ... failed with exception HTTPConnectionPool(...)", "(raised as a result of Query-invoked
    autoflush ...)"); the one they wrap says "Connection refused" or "database or disk is full"."""
    while (cause := error.__cause__ or (None if error.__suppress_context__ else error.__context__)) is not None:
        error = cause
    return error


def _written(write: Callable[[SearchLog], None], log: SearchLog) -> bool:
    write(log)
    return True


# The writer's jobs by phase: a trial's run; the catch-up (the results, which write every trial's
# run again); what follows it at the end (plots, the registry, the parent's end, an early end).
_TRIAL, _CATCH_UP, _END = "trial", "catch-up", "end"


def _import_plotting() -> None:
    """The plots' imports: ~2.3 s, mostly scikit-learn under Optuna's importance evaluator, and
    plotly under Optuna's visualization."""
    import matplotlib.figure  # noqa: F401
    import optuna.importance
    import optuna.visualization  # noqa: F401


def _lower_this_threads_priority() -> None:
    """Let the writer use only CPU the trials leave idle: on a small machine its MLflow and
    SQLAlchemy work would otherwise slow the trials. Its queue is drained at the end anyway."""
    with contextlib.suppress(AttributeError, OSError):  # Linux threads have their own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)

