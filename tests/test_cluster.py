"""A Ray cluster whose nodes share nothing but the network, tried as a user would: a search
without --address next to a `ray start` (live, or killed and its address file left behind)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TwoNodes, free_port, ray_cli, ray_head, stop_processes_under, two_nodes
from test_data import image_folder

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


def cluster_search(folder: Path, address: str, name: str, *args: str, timeout: float = 300
                   ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autotrick", "search", "--address", address, "--name", name,
                           "--trials", "2", "--max-epochs", "1", "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                           *args], cwd=folder, capture_output=True, text=True, timeout=timeout)


NET = """
import torch.nn as nn


def build(num_classes, in_channels):
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_channels * 16, num_classes))
"""


@dataclass
class Cluster:
    nodes: TwoNodes
    folder: Path  # the driver's working folder: empty on the worker node
    shared: Path  # a folder at the same path on both nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One two-node cluster for this module's searches (each starts in ~20 s on 2 cores)."""
    folder, shared = tmp_path_factory.mktemp("driver"), tmp_path_factory.mktemp("shared")
    (folder / "mynet.py").write_text(NET)
    (folder / "mymod.py").write_text(NET)
    with two_nodes(folder) as nodes:
        yield Cluster(nodes, folder, shared)


def trial_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("trial ")]


def test_a_model_file_and_weights_reach_trials_on_another_node_and_the_best_model_is_registered(
        cluster: Cluster) -> None:
    """Every trial runs on the worker node, whose disk has neither the driver's model file, its
    weights file nor its .autotrick folder: the files go to the trials, and the trained models come
    back to the driver's disk, so --register registers the best."""
    import torch

    from autotrick.entrypoints import load_callable

    build = load_callable(f"{cluster.folder}/mynet.py:build", "model")
    torch.save(build(10, 1).state_dict(), cluster.folder / "start.pt")
    done = cluster_search(cluster.folder, cluster.nodes.address, "shared-nothing", "--model", "mynet.py:build",
                          "--weights", "start.pt", "--register", "far-model")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "joined the Ray cluster at" in done.stdout and "2 nodes, 2 CPUs" in done.stdout
    lines = trial_lines(done.stdout)
    assert len(lines) == 2 and not any(" failed " in line for line in lines), done.stdout
    assert re.search(r"^time: .*models_sent 2\.00, model_transfer \d+\.\d\ds", done.stdout, re.M), done.stdout
    # the confirmation's seeded runs trained on the worker node from the same shipped files
    confirm = [line for line in done.stdout.splitlines() if line.startswith("confirm ")]
    assert confirm and not any(" failed" in line for line in confirm), done.stdout
    from autotrick.tracking import load_model

    # its one version, under champion or unconfirmed as the confirmation decided
    model = load_model("models:/far-model/1", tracking_uri=f"sqlite:///{cluster.folder}/mlflow.db")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_module_of_the_driver_folder_trains_on_an_image_folder_that_every_node_has(cluster: Cluster) -> None:
    images = image_folder(cluster.shared / "pets", {"train": 4, "val": 2})
    done = cluster_search(cluster.folder, cluster.nodes.address, "module-images", "--model", "mymod:build",
                          "--data", f"imagefolder:{images}")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = trial_lines(done.stdout)
    assert len(lines) == 2 and not any(" failed " in line for line in lines), done.stdout


def test_an_image_folder_on_the_driver_only_is_refused_in_one_line_naming_the_node(cluster: Cluster) -> None:
    images = image_folder(cluster.folder / "local-pets", {"train": 4, "val": 2})
    done = cluster_search(cluster.folder, cluster.nodes.address, "driver-only", "--data", f"imagefolder:{images}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert not trial_lines(done.stdout)
    [line] = done.stderr.strip().splitlines()
    node = r"not on the Ray node \S+ \([0-9a-f]{8}\), where trials run;"
    assert re.match(f"autotrick: error: {re.escape(str(images))}: {node}", line), line
    assert "same path on every node" in line


def test_a_registration_that_fails_makes_the_exit_code_non_zero_and_is_said_on_the_parent_run(
        ray_address: str, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The driver finds no trained model (as on a cluster before its models came back)."""
    import autotrick.search
    from autotrick.commands import SearchRequest, run_search_command

    monkeypatch.setattr(autotrick.search, "saved_model_path", lambda state_dir, number: workdir / "nowhere.pt")
    uri = f"sqlite:///{workdir}/mlflow.db"
    code = run_search_command(SearchRequest(name="unregistered", trials=2, max_epochs=1, register="lost",
                                            tracking_uri=uri))
    assert code == 1
    assert "autotrick: error: --register lost: trial 0's trained model did not reach the driver; nothing registered" \
        in capsys.readouterr().err
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    [parent] = [run for run in client.search_runs([client.get_experiment_by_name("unregistered").experiment_id])
                if run.data.tags.get("autotrick.role") == "parent"]
    assert "nothing registered" in parent.data.tags["autotrick.reason"] and parent.info.status == "FINISHED"
    assert not client.search_registered_models()


def test_a_cluster_without_a_node_for_a_trial_says_so_and_waits_for_one_or_stops(
        workdir: Path, ray_tmpdir: str) -> None:
    """A head with no CPU for trials: the search says what a trial waits for and what the cluster
    has, and either stops after --wait-for-resources or goes on once a node with CPUs joins
    (before, it printed its header and then nothing)."""
    command = [sys.executable, "-m", "autotrick", "search", "--address", "ADDRESS", "--trials", "2",
               "--max-epochs", "1", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]
    has = "the cluster has 1 node, 0 CPUs, 0 GPUs"
    with ray_head(num_cpus=0) as address:
        command[command.index("ADDRESS")] = address
        stopped = subprocess.run([*command, "--name", "no-cpus", "--wait-for-resources", "3"], cwd=workdir,
                                 capture_output=True, text=True, timeout=240)
        assert stopped.returncode == 2, stopped.stdout + stopped.stderr
        lines = stopped.stderr.strip().splitlines()
        assert len(lines) == 2, stopped.stderr
        notice, error = lines
        assert notice.startswith(f"autotrick: waiting for a Ray node that can run a trial (1 CPU): {has}")
        assert notice.endswith("; stopping after 3 s")
        assert error.startswith(f"autotrick: error: no Ray node can run a trial after waiting 3 s: each asks 1 CPU, "
                                f"and {has}")

        waiting = subprocess.Popen([*command, "--name", "waits"], cwd=workdir, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert waiting.stderr is not None
        notice = waiting.stderr.readline().rstrip()
        assert notice.startswith(f"autotrick: waiting for a Ray node that can run a trial (1 CPU): {has}")
        assert notice.endswith("until a node joins (Ctrl-C stops; --wait-for-resources SECONDS stops by itself)")
        subprocess.run([ray_cli(), "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        f"--temp-dir={ray_tmpdir}", "--disable-usage-stats"], check=True, capture_output=True,
                       timeout=180)
        out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, out + err
    assert "a node that can run a trial has joined: the cluster has 2 nodes, 1 CPU, 0 GPUs" in err
    assert len(trial_lines(out)) == 2


SLOW_ON_THE_WORKER = """
import os
import time
from pathlib import Path

import torch.nn as nn


class Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.05)
        return x


def build(num_classes, in_channels):
    layers = [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_channels * 16, num_classes)]
    if os.environ.get("AUTOTRICK_TEST_NODE") == "worker":  # set on the worker node only
        Path({marker!r}).write_text("a trial runs on the worker node")
        layers.append(Slow())
    return nn.Sequential(*layers)
"""


def test_a_worker_node_lost_mid_search_fails_its_trial_naming_the_node_and_the_search_goes_on(
        workdir: Path, ray_tmpdir: str) -> None:
    """The head has a CPU too, so the search can go on without the worker node; the worker node is
    SIGKILLed (its raylet and all) while a trial runs there. Then --resume repeats nothing."""
    marker = Path(ray_tmpdir) / "on-worker"
    (workdir / "slow.py").write_text(SLOW_ON_THE_WORKER.format(marker=str(marker)))
    uri = f"sqlite:///{workdir}/mlflow.db"
    with ray_head(num_cpus=1) as address:
        subprocess.run([ray_cli(), "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        f"--temp-dir={ray_tmpdir}", "--disable-usage-stats"], check=True, capture_output=True,
                       timeout=180, env={**os.environ, "AUTOTRICK_TEST_NODE": "worker"})
        search = subprocess.Popen([sys.executable, "-m", "autotrick", "search", "--address", address, "--name", "lost",
                                   "--model", "slow.py:build", "--trials", "4", "--max-epochs", "3",
                                   "--tracking-uri", uri], cwd=workdir, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline and search.poll() is None:
            time.sleep(0.5)
        assert marker.exists(), "no trial ran on the worker node"
        stop_processes_under(ray_tmpdir, signal_first=False)
        out, err = search.communicate(timeout=400)
        assert search.returncode == 0, out + err
        lines = trial_lines(out)
        failed = [line for line in lines if " failed " in line]
        assert len(lines) == 4 and len(failed) == 1, out
        lost = r"its worker failed (on|as) the Ray node \S+ \([0-9a-f]{8}\),? (which )?left the cluster"
        assert re.search(lost, failed[0]), failed[0]

        resumed = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", "lost", "--resume",
                                  "--trials", "5"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(trial_lines(resumed.stdout)) == 1  # the fifth: none of the four is run again
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id])
    assert len([r for r in runs if r.data.tags.get("autotrick.role") != "parent"]) == 5
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_a_local_ray_that_cannot_run_a_trial_stops_at_once_in_one_line(workdir: Path) -> None:
    """Ray would keep the trial pending for ever (before: the header, then nothing)."""
    done = subprocess.run([sys.executable, "-m", "autotrick", "search", "--name", "too-big", "--num-cpus", "1",
                           "--cpus-per-trial", "2", "--trials", "2", "--max-epochs", "1",
                           "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"],
                          cwd=workdir, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("autotrick: error: no Ray node can run a trial: each asks 2 CPUs, and the cluster has "
                           "1 node, 1 CPU, 0 GPUs")
    assert line.endswith("give the local Ray more (--num-cpus), or ask less with --cpus-per-trial / --gpus-per-trial")
