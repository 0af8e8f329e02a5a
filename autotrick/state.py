"""A search's state folder, `.autotrick/NAME/`: who owns it, its Optuna journal, the request it
was started with. Nothing here imports Ray or MLflow.

- One owner at a time: an OS file lock (`fcntl.flock`, through the maintained `filelock`). The
  kernel releases it when its holder dies, however it dies (Ctrl-C, SIGKILL, a crash, power
  loss), so a dead holder's lock is simply free. Beside it, `owner.json` names the holder (pid,
  host, start time): for the line that refuses a second search, and, when a holder died without
  removing it, for the line that says its lock was taken over. flock works between processes of
  one machine; two machines writing one network folder (NFS) are not kept apart.
- The Optuna journal (Optuna's JournalFileBackend appends one JSON line per operation), opened
  whole: a last line cut by a kill, a power loss or a full disk is moved to a backup file beside
  it before anything is appended after it (appended to, a cut line would become an invalid line
  in the middle, and Optuna could no longer read the study).
- The request (`request.json`, written atomically), which `--resume` reuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import filelock

from autotrick.atomic import write_bytes_atomically, write_text_atomically
from autotrick.errors import ConfigError, first_line
from autotrick.request import FORMAT as REQUEST_FORMAT

STATE_ROOT = Path(".autotrick")
# MLflow models fetched as checkpoints that trials can read (--weights, distill.teacher): a name no
# search can take (search names are letters, digits, '-' and '_').
FETCHED_MODELS = STATE_ROOT / ".models"
JOURNAL_FILE = "optuna.journal"
REQUEST_FILE = "request.json"
_LOCK_FILE = "lock"
_OWNER_FILE = "owner.json"
_RECORD_START = b'{"op_code"'  # how every line of Optuna's journal begins


@dataclass(frozen=True)
class Owner:
    """The process that holds a search."""

    pid: int
    host: str
    started: str  # local time, to the second

    @classmethod
    def this_process(cls) -> Owner:
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host} (started {self.started})"


class SearchFolder:
    """`.autotrick/NAME/` under the working folder (absolute: Ray workers run in other folders)."""

    def __init__(self, name: str, root: Path = STATE_ROOT) -> None:
        self.name = name
        self.path = (root / name).resolve()

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_FILE

    def started(self) -> bool:
        """Whether a search of this name has begun keeping its study here."""
        try:
            return self.journal.stat().st_size > 0
        except OSError:  # missing, or a file where a folder should be
            return False

    @contextlib.contextmanager
    def owned(self, action: str) -> Iterator[str | None]:
        """Hold the search for this process, or raise a ConfigError naming the live holder
        (`action`: what was asked, "start" or "resume"). Yields the line to tell when the lock of
        a holder that died was taken over (None otherwise). Creates the folder."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the search's folder {self.path}: {first_line(error)}; "
                              "move what is in the way, or run from another folder") from None
        lock = filelock.FileLock(self.path / _LOCK_FILE)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = self._owner_once_written()
            who = str(holder) if holder else "another process (starting: it has not written its name yet)"
            raise ConfigError(f"cannot {action} search '{self.name}': it is running in {who}, which holds "
                              f"{self.path / _LOCK_FILE}; wait for it to end or stop it, or pick another --name"
                              ) from None
        try:
            dead = self._owner()  # left by a holder that ended without releasing: the kernel freed its lock
            write_text_atomically(self.path / _OWNER_FILE, json.dumps(asdict(Owner.this_process())))
            yield f"took over the lock of dead {dead}" if dead else None
        finally:
            with contextlib.suppress(OSError):
                (self.path / _OWNER_FILE).unlink()
            lock.release()

    def _owner_once_written(self, wait_s: float = 3.0) -> Owner | None:
        """The holder's name: it writes it just after taking the lock, so a process refused in
        that moment waits a little for it rather than name nobody."""
        deadline = time.monotonic() + wait_s
        while (owner := self._owner()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return owner

    def _owner(self) -> Owner | None:
        try:
            return Owner(**json.loads((self.path / _OWNER_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # ----------------------------------------------------------------------- the request

    def read_request(self) -> dict[str, Any] | None:
        """The stored request; None for a search started by an autotrick that did not store one."""
        path = self.path / REQUEST_FILE
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: cannot read the search's stored request ({first_line(error)}); "
                              "delete the file to resume with the options given now") from None
        if not isinstance(stored, dict) or stored.get(REQUEST_FORMAT, 1) != 1:
            raise ConfigError(f"{path}: not a stored search request this autotrick reads (format 1); delete it to "
                              "resume with the options given now")
        return stored

    def write_request(self, request: Mapping[str, Any]) -> None:
        write_text_atomically(self.path / REQUEST_FILE, json.dumps(request, indent=1) + "\n")

    # ----------------------------------------------------------------------- the journal

    def repair_journal(self) -> str | None:
        """Make the journal whole before anything is appended; returns the line saying what was
        set aside, or None when it was whole. Call it holding the search (`owned`)."""
        torn = repair_journal(self.journal)
        _release_optuna_journal_lock(self.journal)
        return torn


def repair_journal(path: Path) -> str | None:
    """Set aside what a cut write left in an Optuna journal, keeping every whole record:

    - bytes after the last newline: a line cut short (the write of one record is `json + "\\n"`);
    - a whole line that does not parse, made of a cut line and a whole record appended after it
      (what an autotrick before this check left): the cut part goes, the record stays;
    - a last line that does not parse (a power loss can leave zeros at the end of a file).

    The bytes set aside are kept in `<journal>.torn-<time>` beside it, written before the
    journal is replaced (atomically). An unparsable line in the middle that is none of these is
    not a cut write: the study cannot be read safely, and the file is left as it is."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines(keepends=True)
    kept: list[bytes] = []
    aside: list[bytes] = [] if end == len(data) else [data[end:]]
    for number, line in enumerate(lines, start=1):
        if _parses(line):
            kept.append(line)
            continue
        start = line.rfind(_RECORD_START)
        if start > 0 and _parses(line[start:]):
            aside.append(line[:start])
            kept.append(line[start:])
        elif number == len(lines):
            aside.append(line)
        else:
            raise ConfigError(f"{path}: line {number} is not a journal record and is not at the end, so it is "
                              "not a cut write: the study cannot be read safely; the file is left as it is")
    if not aside:
        return None
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
    write_bytes_atomically(backup, b"".join(aside))
    write_bytes_atomically(path, b"".join(kept))
    size = sum(map(len, aside))
    return (f"{path}: set aside {size} bytes of a journal write that was cut off (a kill, a power loss or a full "
            f"disk) in {backup.name}; every whole record is kept")


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


def _release_optuna_journal_lock(journal: Path) -> None:
    """Optuna's JournalFileBackend locks each append with a symlink beside the journal; a process
    killed during an append leaves it, and the next append would wait 30 s to break it. Only the
    holder of the search appends, so a link found now is left over."""
    from optuna.storages.journal import JournalFileSymlinkLock

    with contextlib.suppress(RuntimeError):  # "did not possess lock": there was none
        JournalFileSymlinkLock(str(journal)).release()
