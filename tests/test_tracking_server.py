"""`--tracking-uri` pointed at an MLflow tracking server: a real `mlflow server` on loopback (its own
sqlite store and artifact folder), a real small search writing to it over HTTP, read back over HTTP."""

from __future__ import annotations

import contextlib
import io
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
from autotrick.errors import ConfigError
from autotrick.records import Outcome, SearchInfo, TrialRecord
from autotrick.tracking import (
    TAG_BEST_RUN,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_TRIAL,
    SearchTracker,
    export_recipe_text,
    load_recipe,
    ui_url,
)

pytestmark = pytest.mark.slow

NAME, TRIALS, MAX_EPOCHS = "remote", 3, 2


@dataclass
class Remote:
    uri: str        # http://127.0.0.1:PORT
    server: Path    # the server's folder: its sqlite store and artifacts
    workdir: Path   # where the search ran
    code: int
    header: str     # the search's first printed line


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
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = run_search_command(SearchRequest(space="quick", trials=TRIALS, max_epochs=MAX_EPOCHS, name=NAME,
                                                    tracking_uri=uri))
        yield Remote(uri, server_dir, workdir, code, printed.getvalue().splitlines()[0])
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


def test_the_header_line_says_which_store_is_used(remote: Remote) -> None:
    assert remote.header.startswith(f"search '{NAME}': ") and f"; MLflow {remote.uri}" in remote.header


def log_one_trial(name: str, tracking_uri: str | None = None) -> None:
    info = SearchInfo(name=name, space="quick", model="cnn", data="digits", metric="val_accuracy", mode="max",
                      trials=1, max_epochs=1, batch_size=64, seed=0, device="cpu")
    tracker = SearchTracker(info, tracking_uri=tracking_uri)
    tracker.trial_finished(TrialRecord(0, {"optim.lr": 0.05}, Outcome.FINISHED, 0.9, 1,
                                       [{"epoch": 1, "val_accuracy": 0.9}], baseline=True))
    tracker.close(timeout=120)


def test_mlflow_tracking_uri_is_honoured_and_the_flag_overrides_it(remote: Remote, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server = MlflowClient(remote.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", remote.uri)  # a team's server, as MLflow users set it
    monkeypatch.chdir(tmp_path)
    log_one_trial("from-env")
    assert server.get_experiment_by_name("from-env") is not None
    assert not (tmp_path / "mlflow.db").exists()
    url = ui_url(search_name="from-env")  # `autotrick ui` on a server: the server's own address
    assert url.startswith(f"{remote.uri}/#/experiments/{server.get_experiment_by_name('from-env').experiment_id}/runs")

    local = f"sqlite:///{tmp_path / 'flag.db'}"
    log_one_trial("from-flag", local)  # the flag wins over the environment
    assert server.get_experiment_by_name("from-flag") is None
    assert MlflowClient(local).get_experiment_by_name("from-flag") is not None


def test_mlflow_experiment_name_holds_the_search(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-experiments")
    log_one_trial("in-team", remote.uri)
    server = MlflowClient(remote.uri)
    experiment = server.get_experiment_by_name("team-experiments")
    assert experiment is not None and server.get_experiment_by_name("in-team") is None
    runs = server.search_runs([experiment.experiment_id], f"tags.`{TAG_SEARCH}` = 'in-team'")
    assert {run.data.tags[TAG_ROLE] for run in runs} == {"parent", "trial"}
    with pytest.raises(ConfigError, match=r"has no artifact 'recipe\.yaml'"):  # found by its search name
        export_recipe_text(search_name="in-team", tracking_uri=remote.uri)
