"""Shared fixtures. One real Ray for the whole test session: a `ray start --head` on loopback
with 2 CPUs, which in-process searches join and CLI subprocesses reach with --address."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def stop_processes_under(temp_dir: str, *, signal_first: bool = True) -> None:
    """Stop this head's processes only: `ray stop` would stop every Ray on the machine, a
    developer's own cluster included. Each of ours names the head's unique temp dir.
    signal_first=False: SIGKILL at once, as the OOM killer or a crash ends a node."""
    import psutil  # a dependency of autotrick (its data placement)

    ours = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp_dir in arg for arg in process.info["cmdline"] or ()):
                ours.append(process)
    if not signal_first:
        for process in ours:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(ours, timeout=10)
        return
    for process in ours:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(ours, timeout=5)  # some ignore SIGTERM: no need to wait long
    for process in alive:
        process.kill()


@contextlib.contextmanager
def ray_head(*, num_cpus: int = 2, num_gpus: int = 0, env: dict[str, str] | None = None) -> Iterator[str]:
    """A `ray start --head` of its own on loopback (num_gpus on a machine without GPUs is a logical
    resource: Ray schedules by it), started with `env` (default: this process's); yields its
    address and stops only its own processes."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    subprocess.run([ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True, timeout=180,
                   env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    import ray

    with ray_head() as address:
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": "autotrick.search.warm_worker"})
        try:
            yield address
        finally:
            ray.shutdown()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: searches write .autotrick/, mlflow.db and recipes here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _mlflow_variables_restored() -> Iterator[None]:
    """A test that calls mlflow.set_tracking_uri (or set_experiment) exports MLFLOW_TRACKING_URI
    (MLFLOW_EXPERIMENT_ID) to every later subprocess: put them back, so each test's CLI runs use
    the store that test gives them."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    saved = {key: os.environ.get(key) for key in keys}
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and os.environ.get("MLFLOW_TRACKING_URI") != saved["MLFLOW_TRACKING_URI"]:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def unshare_allowed() -> bool:
    """Whether this process may start one in a private mount namespace (root, or a container that allows it)."""
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run([unshare, "--mount", "true"], capture_output=True).returncode == 0


class TwoNodes:
    """A head node that runs the driver but no trial (no CPU), and a worker node with the CPUs that
    sees its own empty disk where the driver keeps its folder: two machines with nothing shared but
    the network, on one."""

    def __init__(self, address: str, temp_dir: str) -> None:
        self.address, self.temp_dir = address, temp_dir

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's processes (its raylet and workers), as a lost machine ends."""
        import psutil

        ours = os.readlink("/proc/self/ns/mnt")
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                if any(self.temp_dir in arg for arg in process.info["cmdline"] or ()) \
                        and os.readlink(f"/proc/{process.pid}/ns/mnt") != ours:
                    process.kill()


@contextlib.contextmanager
def two_nodes(driver_folder: Path, *, worker_cpus: int = 2) -> Iterator[TwoNodes]:
    """A two-node Ray cluster on 127.0.0.1: the worker node runs in a private mount namespace with
    an empty tmpfs over `driver_folder`. Skips the test where unshare is not allowed."""
    if not unshare_allowed():
        pytest.skip("unshare --mount is not allowed here (needs root or a user namespace): no private disk for a node")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        f"--temp-dir={temp_dir}", "--num-cpus=0", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True, timeout=180)
        worker = (f'mount -t tmpfs tmpfs "$0" && cd / && exec {ray_cli()} start --address={address} '
                  f"--node-ip-address=127.0.0.1 --temp-dir={temp_dir} --num-cpus={worker_cpus} --disable-usage-stats")
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", worker, str(driver_folder)],
                       check=True, capture_output=True, timeout=180)
        yield TwoNodes(address, temp_dir)
    finally:
        stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
