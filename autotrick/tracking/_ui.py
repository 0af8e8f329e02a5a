"""The MLflow UI: a server on the store, started as a child process, and the address that lands on
a search's runs table, set up for reviewing it.

How MLflow 3.17's UI is steered, from its source (mlflow/server/js): an experiment opens in the
"GenAI" view (traces, an overview) unless the app's workflow type is "machine_learning"; that
type is read from the URL's `workflowType` parameter (else the browser's last choice), and where
the switch is turned off, from the experiment's `mlflow.experimentKind` tag: we set both. The runs
table's columns and sort cannot be given in a URL, but a "shared view" can: an experiment tag
`mlflow.sharedViewState.<key>` holding the table's state as JSON, opened by `?viewStateShareKey=<key>`
(what the UI's own Share button writes). The search writes one per search (`view_state`), so the
address `ui_url` prints opens the trials sorted by the search metric with the metric, the
comparable metric, the outcome and the searched tricks as columns. The UI does not let a shared
view unfold the parent run: the user clicks its row's arrow once.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from autotrick.errors import ConfigError
from autotrick.tracking._store import (
    TAG_SEARCH,
    experiment_name,
    find_experiment_id,
    is_server,
    latest_parent,
    latest_search,
    open_client,
    require_store,
    resolve_tracking_uri,
    tag_filter,
)

EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's experiment tag for the kind of work
ML_KIND = "custom_model_development"      # its value for model training ("Machine learning")
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + key: a shared view of the runs table
TAG_VIEW_KEY = "autotrick.view_key"        # on a parent run: the key of its search's view


def serve_ui(*, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000,
             timeout: float = 90.0) -> subprocess.Popen[bytes]:
    """Start the MLflow UI on the store as a child process and return once it answers HTTP.
    Its output goes to a log file, so a pipe nobody reads can never block it."""
    uri = resolve_tracking_uri(tracking_uri)
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
    """The address of a search's runs table (the store's latest search without a name) in the
    machine-learning view, in its shared view when the search wrote one; the UI's home page when
    the store holds no search. An http(s) tracking URI is a server already: its own address."""
    uri = resolve_tracking_uri(tracking_uri)
    base = uri.rstrip("/") if is_server(uri) else f"http://{host}:{port}"
    client = open_client(uri)
    if search_name is not None:
        experiment_id = find_experiment_id(client, search_name)
        parent = latest_parent(client, experiment_id, search_name) if experiment_id else None
    else:
        parent = latest_search(client)
        experiment_id = parent.info.experiment_id if parent else None
    if experiment_id is None:
        return f"{base}/"
    # the runs tab itself: opening the experiment redirects there, dropping the share key
    url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    key = parent.data.tags.get(TAG_VIEW_KEY) if parent else None
    return url + (f"&viewStateShareKey={key}" if key else "")


def view_state(search: str, metric: str, mode: str, columns: list[str]) -> tuple[str, str]:
    """The runs table as a search's review starts: (share key, the view's JSON). `columns` are the
    table's column keys, e.g. "metrics.`final_val_accuracy`", "params.`optim.lr`"."""
    state: dict[str, object] = {
        "orderByKey": columns[0], "orderByAsc": mode == "min", "selectedColumns": columns,
        "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True}
    if experiment_name(search) != search:  # a shared experiment: this search's runs only
        state["searchFilter"] = tag_filter(TAG_SEARCH, search)
    return f"autotrick-{search}", json.dumps(state)


def column(kind: str, name: str) -> str:
    """A runs-table column key as the UI writes it: metrics.`name`, params.`name`, tags.`name`."""
    return f"{kind}.`{name}`"


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

