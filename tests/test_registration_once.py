"""`--register` registers a search's winner once: a real search killed (SIGKILL) while its best model
is being registered, then resumed, leaves one model version, tagged with the search and trial, and
the champion alias on it."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_search import cli

from autotrick.tracking import CHAMPION, TAG_BEST_RUN, TAG_ROLE, TAG_TRIAL

pytestmark = pytest.mark.slow

MODEL = "digits-cnn"


def model_versions(store: Path) -> int:
    """Rows in the registry's table, read as the search writes it (no MLflow client: it would wait on locks)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True,
                                                                                timeout=0.05)) as db:
        return int(db.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    return 0


def test_a_kill_while_registering_then_resume_registers_one_version(ray_address: str, tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    search = cli(tmp_path, "search", "--address", ray_address, "--name", "reg", "--trials", "2", "--max-epochs", "1",
                 "--register", MODEL, "--tracking-uri", uri, "--no-confirm")  # the champion: no verdict to wait for
    deadline = time.monotonic() + 400
    while search.poll() is None and model_versions(store) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert search.poll() is None, "the search ended before its model version appeared: no kill in registration"
    search.send_signal(signal.SIGKILL)  # the version exists: the alias, the descriptions and the end are cut
    search.communicate(timeout=60)

    resumed = cli(tmp_path, "search", "--name", "reg", "--resume", "--register", MODEL)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out + err
    client = MlflowClient(uri)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert champion.version == versions[0].version and champion.status == "READY"
    experiment = client.get_experiment_by_name("reg")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if run.data.tags.get(TAG_ROLE) == "parent"]
    assert champion.tags["autotrick.search_run_id"] == parent.info.run_id
    assert champion.run_id == parent.data.tags[TAG_BEST_RUN]
    assert champion.tags[TAG_TRIAL] == client.get_run(champion.run_id).data.tags[TAG_TRIAL]
    assert parent.info.status == "FINISHED"
