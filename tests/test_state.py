"""A search's state folder (autotrick.state) on real files, without Ray: the Optuna journal cut by
a kill or a power loss at every byte of its last records and resumed, the damage an earlier
autotrick left by appending after a cut line, and one owner per search."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotrick.errors import ConfigError
from autotrick.records import Outcome, TrialRecord
from autotrick.state import SearchFolder, repair_journal
from autotrick.study import RECORD, records_from_study, requeue_interrupted, tell

SPACE = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
OUTCOMES = (Outcome.FINISHED, Outcome.ASHA_STOPPED, Outcome.DIVERGED, Outcome.FINISHED)


def storage(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def searched_journal(path: Path) -> bytes:
    """A real journal as a search writes it: each trial asked, its record kept, then told."""
    study = optuna.create_study(study_name="s", storage=storage(path), direction="maximize")
    for number, outcome in enumerate(OUTCOMES):
        trial = study.ask(SPACE)
        metric = None if outcome.failed else 0.5 + number / 10
        record = TrialRecord(trial.number, dict(trial.params), outcome, metric, 3)
        trial.set_user_attr(RECORD, record.to_dict())
        tell(study, trial, record)
    return path.read_bytes()


def resume(path: Path) -> optuna.Study:
    """What a resumed search does with the study: load it, then re-queue or tell what was cut off."""
    study = optuna.load_study(study_name="s", storage=storage(path))
    requeue_interrupted(study)
    return study


def test_a_journal_cut_at_every_byte_of_its_last_two_records_resumes_with_every_finished_trial(
        tmp_path: Path) -> None:
    whole = searched_journal(tmp_path / "whole.journal")
    lines = whole.splitlines(keepends=True)
    told, recorded = lines[-1], lines[-2]  # the last trial's tell, and its record before it
    assert b'"state":1' in told and RECORD.encode() in recorded  # COMPLETE; its TrialRecord
    told_at = len(whole) - len(told)
    recorded_at = told_at - len(recorded)
    journal = tmp_path / "optuna.journal"
    for cut in range(recorded_at, len(whole)):
        journal.write_bytes(whole[:cut])
        for backup in tmp_path.glob("optuna.journal.torn-*"):
            backup.unlink()
        line = repair_journal(journal)
        torn = whole[told_at if cut > told_at else recorded_at:cut] if cut not in (recorded_at, told_at) else b""
        if torn:
            assert line is not None and f"set aside {len(torn)} bytes" in line, cut
            assert [p.read_bytes() for p in tmp_path.glob("optuna.journal.torn-*")] == [torn]
        else:
            assert line is None and not list(tmp_path.glob("optuna.journal.torn-*"))
        assert journal.read_bytes() == whole[:cut - len(torn)]  # every whole record kept

        study = resume(journal)
        records = {r.number: r.outcome for r in records_from_study(study)}
        last = len(OUTCOMES) - 1
        if cut >= told_at:  # the record survived, the tell did not: told now from the record
            assert records == dict(enumerate(OUTCOMES)), cut
            assert study.trials[last].state == optuna.trial.TrialState.COMPLETE
        else:  # cut before its record: the trial is re-queued with the parameters it drew
            assert records == dict(enumerate(OUTCOMES[:last])), cut
            assert study.trials[-1].state == optuna.trial.TrialState.WAITING
        trials = len(study.trials)
        assert optuna.trial.TrialState.RUNNING not in {t.state for t in study.trials}
        again = study.ask(SPACE)  # a re-queued trial comes back first, as drawn before
        if cut < told_at:
            assert again.params == study.trials[last].params
        study.tell(again, 0.9)  # appending works, and the study still reads afterwards
        reread = optuna.load_study(study_name="s", storage=storage(journal)).trials
        assert len(reread) == trials + (cut >= told_at) and reread[again.number].value == 0.9


def test_the_damage_an_earlier_autotrick_left_is_repaired(tmp_path: Path) -> None:
    """A record appended after a cut line (what a resume did before journals were repaired)
    makes a line Optuna cannot read, and with it the whole study; the repair keeps the record."""
    journal = tmp_path / "optuna.journal"
    whole = searched_journal(journal)
    journal.write_bytes(whole[:-20])  # the last tell cut 20 bytes short
    with pytest.raises((ValueError, AttributeError)):  # a resume: its new trial went onto the cut line
        optuna.load_study(study_name="s", storage=storage(journal)).ask(SPACE)
    with pytest.raises(ValueError):  # the next one: JSONDecodeError (the traceback)
        optuna.load_study(study_name="s", storage=storage(journal)).ask(SPACE)
    with pytest.raises(ValueError):  # and from then on the study cannot be read at all
        optuna.load_study(study_name="s", storage=storage(journal)).get_trials()
    line = repair_journal(journal)
    told = whole.splitlines(keepends=True)[-1]
    assert line is not None and f"set aside {len(told) - 20} bytes" in line
    study = resume(journal)
    assert {r.number: r.outcome for r in records_from_study(study)} == dict(enumerate(OUTCOMES))
    assert len(study.trials) == len(OUTCOMES) + 2 + 2  # the two appended trials kept, and re-queued


def test_a_bad_line_in_the_middle_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    lines = searched_journal(journal).splitlines(keepends=True)
    damaged = b"".join([*lines[:3], b"not a record\n", *lines[3:]])
    journal.write_bytes(damaged)
    with pytest.raises(ConfigError, match="line 4 is not a journal record"):
        repair_journal(journal)
    assert journal.read_bytes() == damaged


HOLD = """
import sys, time
from autotrick.state import SearchFolder
with SearchFolder("held").owned("start"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_owner_per_search_and_a_dead_owners_lock_is_free(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        owner = json.loads((tmp_path / ".autotrick" / "held" / "owner.json").read_text())
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        # The real command, in its own process: refused with one line naming the holder.
        done = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", "held"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"cannot start search 'held': it is running in process {holder.pid} on " in lines[0]
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up, its owner.json stays behind
        holder.wait()
    folder = SearchFolder("held", root=tmp_path / ".autotrick")
    with folder.owned("resume") as took_over:
        assert took_over == f"took over the lock of dead process {holder.pid} on {owner['host']} " \
                            f"(started {owner['started']})"
        assert json.loads((folder.path / "owner.json").read_text())["pid"] == os.getpid()
    assert not (folder.path / "owner.json").exists()  # released cleanly: nothing to take over next time


def test_a_resume_naming_what_the_search_started_without_is_refused_in_one_line() -> None:
    from autotrick.commands import SearchRequest
    from autotrick.errors import ConfigError
    from autotrick.request import resumed

    with pytest.raises(ConfigError, match=r"^--weights w\.pt: search 'cut' was started without --weights, and a "):
        resumed(SearchRequest(weights="w.pt"), {"weights": None}, "cut", same={"weights": str.upper})


def test_files_written_whole_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """mkstemp makes 0600 files: a recipe or an export would be private to its writer."""
    from autotrick.atomic import write_text_atomically

    umask = os.umask(0)
    os.umask(umask)
    created = write_text_atomically(tmp_path / "new.yaml", "a: 1\n")
    (tmp_path / "opened.yaml").write_text("a: 1\n")
    assert created.stat().st_mode & 0o777 == (tmp_path / "opened.yaml").stat().st_mode & 0o777 == 0o666 & ~umask
    private = tmp_path / "private.yaml"
    private.write_text("a: 0\n")
    private.chmod(0o600)
    assert (write_text_atomically(private, "a: 1\n").stat().st_mode & 0o777) == 0o600  # an existing file's stays


def test_a_resume_without_data_mode_keeps_the_mode_the_search_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    import autotrick.commands
    from autotrick.cli import main
    from autotrick.request import resumed

    requests: list[object] = []
    monkeypatch.setattr(autotrick.commands, "run_search_command", lambda request: requests.append(request) or 0)
    with pytest.raises(SystemExit):
        main(["search", "--name", "cut", "--resume"])
    [request] = requests
    assert resumed(request, {"data_mode": "stream"}, "cut", same={})[0].data_mode == "stream"  # type: ignore[arg-type]


def test_a_stored_request_of_another_format_is_refused_in_one_line(tmp_path: Path) -> None:
    from autotrick.errors import ConfigError

    folder = SearchFolder("later", root=tmp_path / ".autotrick")
    folder.path.mkdir(parents=True)
    (folder.path / "request.json").write_text(json.dumps({"autotrick_request": 2, "trials": 8}))
    with pytest.raises(ConfigError, match=r"request.json: not a stored search request this autotrick reads"):
        folder.read_request()
