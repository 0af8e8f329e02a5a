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
from test_search import cli, wait_for_trials
from test_tracking_server import free_port, wait_until_up

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
