"""A Ray cluster whose nodes share nothing but the network, tried as a user would: a search
without --address next to a `ray start` (live, or killed and its address file left behind)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, ray_cli, stop_processes_under

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_tmpdir() -> Iterator[str]:
    """A private RAY_TMPDIR: where `ray start` leaves its address file (ray_current_cluster) and
    where a driver without an address looks for it, kept apart from any other Ray on the machine."""
    path = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    try:
        yield path
    finally:
        stop_processes_under(path)
        shutil.rmtree(path, ignore_errors=True)


def start_head(ray_tmpdir: str, env: dict[str, str]) -> None:
    """A `ray start --head` with no CPU for trials: a search that joined it would wait forever."""
    subprocess.run([ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                    f"--temp-dir={ray_tmpdir}/ray", "--num-cpus=0", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=180, env=env)
    assert (Path(ray_tmpdir) / "ray" / "ray_current_cluster").is_file()


def small_search(workdir: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", name, "--trials", "2",
                           "--max-epochs", "1", "--num-cpus", "1", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=240)


def test_a_search_without_address_starts_its_own_ray_beside_a_dead_or_live_ray_start(
        workdir: Path, ray_tmpdir: str) -> None:
    """The address file of a `ray start --head` killed with SIGKILL (as the OOM killer does) made
    every later search hang after its header; a live one was joined, silently. Both heads here
    have no CPU: a search that joined either would never run a trial."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir}
    start_head(ray_tmpdir, env)
    stop_processes_under(ray_tmpdir, signal_first=False)  # SIGKILL: the address file stays
    assert (Path(ray_tmpdir) / "ray" / "ray_current_cluster").is_file()
    after_dead = small_search(workdir, "after-dead", env)
    assert after_dead.returncode == 0, after_dead.stdout + after_dead.stderr
    assert sum(line.startswith("trial ") for line in after_dead.stdout.splitlines()) == 2
    assert "joined the Ray cluster" not in after_dead.stdout

    start_head(ray_tmpdir, env)
    beside_live = small_search(workdir, "beside-live", env)
    assert beside_live.returncode == 0, beside_live.stdout + beside_live.stderr
    assert sum(line.startswith("trial ") for line in beside_live.stdout.splitlines()) == 2
    assert "joined the Ray cluster" not in beside_live.stdout
