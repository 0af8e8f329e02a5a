"""The world around a search failing: a real `mlflow server` on loopback killed in the middle of a
search, then started again for `--resume`; a search whose disk fills up (a small tmpfs in a private
mount namespace)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_search import cli, study_of, wait_for_trials
from test_tracking_server import free_port, wait_until_up

from autotrick.study import records_from_study
from autotrick.tracking import TAG_PARENT, TAG_ROLE, TAG_TRIAL

pytestmark = pytest.mark.slow


@contextmanager
def mlflow_server(folder: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real tracking server with its store and artifacts in `folder`: killed (SIGKILL, as a
    crashed host or an OOM killer would) when the block ends, unless the test killed it first."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/health")
        yield server
    finally:
        kill_server(server)


def kill_server(server: subprocess.Popen[bytes]) -> None:
    """The server and its gunicorn/uvicorn workers (its own process group)."""
    import os
    import signal

    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def test_a_tracking_server_that_dies_mid_search_is_caught_up_by_resume(ray_address: str, tmp_path: Path) -> None:
    """Killed after the second trial: the trials go on, the search says so once, ends in bounded
    time with one error line and exit 1; with the server back, --resume writes what it missed:
    each trial once, nothing RUNNING."""
    workdir, folder = tmp_path / "client", tmp_path / "server"
    workdir.mkdir()
    folder.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with mlflow_server(folder, port) as server:
        search = cli(workdir, "search", "--address", ray_address, "--name", "dying", "--trials", "5",
                     "--max-epochs", "2", "--concurrency", "1", "--tracking-uri", uri)
        wait_for_trials(search, 2)
        kill_server(server)
        killed = time.monotonic()
        out, err = search.communicate(timeout=300)
    waited = time.monotonic() - killed
    assert search.returncode == 1, out + err
    assert "Traceback" not in err and "🏃" not in out and "View run" not in out
    said = [line for line in err.splitlines() if "MLflow store" in line]
    assert len(said) == 2, err  # once when it failed, once at the end
    assert said[0].startswith(f"autotrick: MLflow store {uri} failed (") and "the trials go on" in said[0]
    assert said[1].startswith(f"autotrick: error: MLflow store {uri} missed records (")
    assert said[1].endswith("once it is back, resume with `autotrick search --name dying --resume` writes them")
    assert len([line for line in out.splitlines() if line.startswith("trial ")]) == 3  # the trials went on
    assert (workdir / "dying.recipe.yaml").is_file()
    print(f"the search ended {waited:.1f}s after the server died; its lines: {said}")
    assert waited < 120, f"the search ended {waited:.0f}s after the server died"

    with mlflow_server(folder, port):  # the same store, back
        resumed = cli(workdir, "search", "--name", "dying", "--resume")
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, out + err
        assert "🏃" not in out
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("dying")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [run for run in runs if run.data.tags.get(TAG_ROLE) == "parent"]
    assert [run.info.status for run in parents] == ["FINISHED"]
    children = [run for run in runs if run.data.tags.get(TAG_PARENT) == parents[0].info.run_id]
    assert sorted(int(run.data.tags[TAG_TRIAL]) for run in children) == list(range(5))  # each trial once
    assert all(run.info.status != "RUNNING" for run in runs)


@contextmanager
def private_tmpfs(folder: Path, size: str) -> Iterator[int]:
    """A tmpfs of `size` mounted on `folder` in a mount namespace of its own (held by a sleeping
    process, whose pid is yielded): commands run in it with `inside`, and the test reaches its
    files through /proc/PID/root. Skips where mount namespaces are not allowed (not root, a
    container without CAP_SYS_ADMIN)."""
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size={size} tmpfs {folder} && echo mounted && exec sleep 3600"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "mounted":
        holder.kill()
        pytest.skip(f"no private tmpfs here (unshare --mount, then mount -t tmpfs): {holder.communicate()[1].strip()}")
    try:
        yield holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=30)


def inside(pid: int, folder: Path, *args: str) -> subprocess.Popen[str]:
    """`autotrick ARGS` run in `folder` within the mount namespace of process `pid`."""
    import os
    import shlex

    command = f"cd {shlex.quote(str(folder))} && exec {shlex.quote(sys.executable)} -m autotrick {shlex.join(args)}"
    return subprocess.Popen(["nsenter", "--target", str(pid), "--mount", "--", "sh", "-c", command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    import errno

    with path.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(bytes(1 << 16))
        except OSError as error:
            assert error.errno == errno.ENOSPC
    with path.open("ab", buffering=0) as file, pytest.raises(OSError):  # the last pages, smaller than a chunk
        while True:
            file.write(bytes(512))


def test_a_disk_that_fills_up_mid_search_stops_it_in_one_line_and_resume_continues(
        ray_address: str, tmp_path: Path) -> None:
    """The search's folder, its MLflow store and its recipe on a 16 MB tmpfs filled after two
    trials: one line naming the file and "No space left", exit 1, what was written whole; with
    room again, --resume finishes the search: every trial once in the journal and in MLflow."""
    import json

    folder = tmp_path / "small-disk"
    folder.mkdir()
    with private_tmpfs(folder, "16m") as pid:
        seen = Path(f"/proc/{pid}/root") / str(folder).lstrip("/")  # the tmpfs, as the namespace sees it
        search = inside(pid, folder, "search", "--address", ray_address, "--name", "full", "--trials", "6",
                        "--max-epochs", "2", "--concurrency", "1", "--tracking-uri", "sqlite:///mlflow.db")
        wait_for_trials(search, 2)
        fill(seen / "filler")
        out, err = search.communicate(timeout=300)
        assert search.returncode == 1, out + err
        assert "Traceback" not in err, err
        said = [line for line in err.splitlines() if line.startswith("autotrick:")]
        assert said[-1].startswith("autotrick: error: OSError: [Errno 28] No space left on device: '"), err
        assert said[-1].endswith("': free some space, then run the command again (a search: with --resume)")
        # What it could not write, by when the disk filled: the journal, Tune's state in the search's
        # folder, or the recipe at the end.
        named = said[-1].split("No space left on device: '", 1)[1].split("'", 1)[0]
        assert ".autotrick/full" in named or named.endswith("full.recipe.yaml"), said[-1]
        assert len(said) <= 2  # and the MLflow store's failure, said once, when it failed first
        journal = seen / ".autotrick" / "full" / "optuna.journal"
        lines = journal.read_bytes().split(b"\n")
        for line in lines[:-2]:  # whole records; at most the last one cut (set aside on resume)
            json.loads(line)
        json.loads((seen / ".autotrick" / "full" / "request.json").read_text())

        (seen / "filler").unlink()  # room again
        resumed = inside(pid, folder, "search", "--name", "full", "--resume")
        out, err = resumed.communicate(timeout=400)
        assert resumed.returncode == 0, out + err
        assert (seen / "full.recipe.yaml").is_file()
        runs = runs_inside(pid, folder, "full")
        numbers = sorted(record.number for record in records_from_study(study_of(seen, "full")))
    assert len(numbers) == 6  # the trial whose record the full disk cut was re-run, as after a kill
    parents = [run for run in runs if run["tags"].get(TAG_ROLE) == "parent"]
    assert [run["status"] for run in parents] == ["FINISHED"]
    children = [run for run in runs if run["tags"].get(TAG_PARENT) == parents[0]["id"]]
    assert sorted(int(run["tags"][TAG_TRIAL]) for run in children) == numbers  # each once
    assert all(run["status"] != "RUNNING" for run in runs)


def runs_inside(pid: int, folder: Path, experiment: str) -> list[dict]:
    """The experiment's runs in `folder`'s mlflow.db, read within the namespace (SQLite resolves
    /proc/PID/root to the host's root, where the store is not)."""
    import json

    script = ("import json, sys; from mlflow import MlflowClient; c = MlflowClient('sqlite:///mlflow.db'); "
              f"e = c.get_experiment_by_name({experiment!r}).experiment_id; "
              "print(json.dumps([{'id': r.info.run_id, 'status': r.info.status, 'tags': r.data.tags} "
              "for r in c.search_runs([e], max_results=1000)]))")
    read = subprocess.run(["nsenter", "--target", str(pid), "--mount", "--", "sh", "-c",
                           f"cd {folder} && exec {sys.executable} -c \"{script}\""],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(read.stdout.strip().splitlines()[-1])
