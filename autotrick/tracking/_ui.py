"""The MLflow UI: a server on the store, started as a child process, and the address of a search's runs."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from autotrick.errors import ConfigError
from autotrick.tracking._store import DEFAULT_TRACKING_URI, open_client, require_store


def serve_ui(*, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000,
             timeout: float = 90.0) -> subprocess.Popen[bytes]:
    """Start the MLflow UI on the store as a child process and return once it answers HTTP.
    Its output goes to a log file, so a pipe nobody reads can never block it."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    require_store(uri)
    _check_port_free(host, port)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
               "--port", str(port), "--workers", "1"]  # one worker: a personal UI, and a quicker start
    fd, log_path = tempfile.mkstemp(prefix="autotrick-ui-", suffix=".log")
    with open(fd, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_http(process, f"http://{host}:{port}/health", timeout, Path(log_path))
    except BaseException:  # a Ctrl-C during the start-up must not leave the server running
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        raise
    return process


def ui_url(*, search_name: str | None = None, tracking_uri: str | None = None, host: str = "127.0.0.1",
           port: int = 5000) -> str:
    """The UI's address: with a search's name, its runs in the "Model training" view (MLflow 3.17
    opens an experiment in its GenAI view, traces only, unless the address asks otherwise)."""
    base = f"http://{host}:{port}"
    if search_name is None:
        return base
    experiment = open_client(tracking_uri or DEFAULT_TRACKING_URI).get_experiment_by_name(search_name)
    if experiment is None:
        return base
    return f"{base}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"


def _check_port_free(host: str, port: int) -> None:
    """Another server on the port would answer our health check in the UI's place."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigError(f"port {port} on {host} is in use; pick another with --port") from None


def _wait_for_http(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"the MLflow UI exited with code {process.returncode}: {last} (log: {log})")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    process.terminate()
    process.wait(timeout=10)
    raise ConfigError(f"the MLflow UI did not answer at {url} within {timeout:g}s (log: {log})")

