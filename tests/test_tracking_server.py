"""`--tracking-uri` pointed at an MLflow tracking server: a real `mlflow server` on loopback (its own
sqlite store and artifact folder), a real small search writing to it over HTTP, read back over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from autotrick.cli import main
from autotrick.commands import SearchRequest, run_search_command
from autotrick.tracking import TAG_BEST_RUN, TAG_PARENT, TAG_ROLE, TAG_TRIAL, load_recipe

pytestmark = pytest.mark.slow

NAME, TRIALS, MAX_EPOCHS = "remote", 3, 2


@dataclass
class Remote:
    uri: str        # http://127.0.0.1:PORT
    server: Path    # the server's folder: its sqlite store and artifacts
    workdir: Path   # where the search ran
    code: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(server: subprocess.Popen[bytes], url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow server exited with {server.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"mlflow server not answering at {url} after {timeout:g}s")


@pytest.fixture(scope="module")
def remote(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    server_dir, workdir = tmp_path_factory.mktemp("server"), tmp_path_factory.mktemp("client")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{server_dir}/server.db",
         "--artifacts-destination", str(server_dir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=server_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    previous = os.getcwd()
    try:
        wait_until_up(server, f"{uri}/health")
        os.chdir(workdir)
        code = run_search_command(SearchRequest(space="quick", trials=TRIALS, max_epochs=MAX_EPOCHS, name=NAME,
                                                tracking_uri=uri))
        yield Remote(uri, server_dir, workdir, code)
    finally:
        os.chdir(previous)
        server.terminate()
        server.wait(timeout=30)


def test_a_search_logs_to_the_server_and_nothing_locally(remote: Remote) -> None:
    assert remote.code == 0
    client = MlflowClient(remote.uri)
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(run for run in runs if run.data.tags.get(TAG_ROLE) == "parent")
    children = [run for run in runs if run.data.tags.get(TAG_PARENT) == parent.info.run_id]
    assert sorted(int(run.data.tags[TAG_TRIAL]) for run in children) == list(range(TRIALS))
    for child in children:
        assert "optim.lr" in child.data.params
        assert client.get_metric_history(child.info.run_id, "val_accuracy")
        assert child.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_BEST_RUN] in {run.info.run_id for run in children}
    assert not (remote.workdir / "mlflow.db").exists() and not (remote.workdir / "mlruns").exists()
    assert (remote.server / "server.db").exists()
    assert list((remote.server / "artifacts").rglob("recipe.yaml"))  # artifacts went through the server


def test_the_recipe_comes_back_from_the_server(remote: Remote, capsys: pytest.CaptureFixture[str]) -> None:
    written = load_recipe(remote.workdir / f"{NAME}.recipe.yaml")
    parent_id = written.provenance["mlflow_run_id"]
    assert load_recipe(f"runs:/{parent_id}/recipe.yaml", tracking_uri=remote.uri).tricks == written.tricks
    with pytest.raises(SystemExit) as exited:
        main(["export", "--name", NAME, "-o", "exported.yaml", "--tracking-uri", remote.uri])
    assert exited.value.code == 0, capsys.readouterr().err
    assert load_recipe(remote.workdir / "exported.yaml").tricks == written.tricks
