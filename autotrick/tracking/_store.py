"""The MLflow store: where it is (the --tracking-uri flag, else MLFLOW_TRACKING_URI, else a local
sqlite file), which experiment holds a search (MLFLOW_EXPERIMENT_NAME, else the search's name),
the tags that mark autotrick's runs, and the queries that find a search's runs again. Shared by
the writer and the readers; MLflow itself is imported lazily (about 2 s)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autotrick.errors import ConfigError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default; 3.13+ refuses the file store
CHAMPION = "champion"        # the registered model's alias for a search's best

TAG_SEARCH = "autotrick.search"
TAG_ROLE = "autotrick.role"
TAG_TRIAL = "autotrick.trial"
TAG_OUTCOME = "autotrick.outcome"
TAG_REASON = "autotrick.reason"
TAG_BASELINE = "autotrick.baseline"
TAG_BEST = "autotrick.best"
TAG_BEST_RUN = "autotrick.best_run_id"
TAG_IMPORTANCE = "autotrick.importance"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's (or experiment's) description in the MLflow UI
TAG_BEST_NAME = "autotrick.best_run_name"


def resolve_tracking_uri(given: str | None = None) -> str:
    """The store every command uses: the flag, else the MLflow convention's environment variable."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name(search: str) -> str:
    """The experiment that holds a search: MLFLOW_EXPERIMENT_NAME when set (a team's shared
    experiment; searches in it are told apart by their autotrick.search tag), else the search's name."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or search

# A search prints one line per trial: MLflow's download bars and "creating tables" INFO lines
# would interleave with them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# `import mlflow` (lazy) sets its logger to MLFLOW_LOGGING_LEVEL, INFO when unset, undoing a
# setLevel made before it: the variable is what holds. setLevel covers an mlflow imported already.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def seed_sqlite_store(uri: str) -> None:
    """A new sqlite store costs seconds of schema migrations: copy an empty store migrated once
    per MLflow version (kept in the user's cache) instead."""
    import mlflow

    path = sqlite_path(uri)
    if path is None or path.exists():
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotrick"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fresh = cache / f"{template.name}.{os.getpid()}.tmp"
        mlflow.MlflowClient(f"sqlite:///{fresh}").search_experiments()  # runs the migrations
        os.replace(fresh, template)  # atomic: a concurrent search sees the whole file or none
    shutil.copyfile(template, path)


def experiment_for(client: MlflowClient, search: str, tracking_uri: str) -> str:
    name = experiment_name(search)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri, name))


def find_experiment_id(client: MlflowClient, search: str) -> str | None:
    experiment = client.get_experiment_by_name(experiment_name(search))
    return experiment.experiment_id if experiment else None


def _artifact_location(tracking_uri: str, name: str) -> str | None:
    """Artifacts of a sqlite store beside its file (MLflow would put them under the current
    folder), so a store moves or goes as one folder; other stores choose their own."""
    path = sqlite_path(tracking_uri)
    return (path.resolve().parent / "mlruns" / name).as_uri() if path else None


def latest_parent(client: MlflowClient, experiment_id: str, search: str | None = None) -> Run | None:
    """The latest parent run of `search` in the experiment (of any search, without a name)."""
    where = tag_filter(TAG_ROLE, "parent") + (f" and {tag_filter(TAG_SEARCH, search)}" if search else "")
    runs = client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def latest_search(client: MlflowClient) -> Run | None:
    """The parent run of the store's latest search, whatever its experiment."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, tag_filter(TAG_ROLE, "parent"), order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    return runs[0] if runs else None


def all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Run]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, page_token=token)
        yield from page
        if not (token := page.token):
            return


def tag_filter(key: str, value: str) -> str:
    return f"tags.`{key}` = '{value}'"


def open_client(uri: str) -> MlflowClient:
    require_store(uri)
    from mlflow import MlflowClient

    return MlflowClient(uri)


def require_store(uri: str) -> None:
    """Opening a missing sqlite file would silently create an empty store (seconds of migrations)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ConfigError(f"no MLflow store at {uri} ({path} does not exist): run `autotrick search` "
                          "first, or pass --tracking-uri")


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def search_names(client: MlflowClient) -> str:
    names = [e.name for e in client.search_experiments() if e.name != "Default"]
    return ", ".join(sorted(names)) or "none"

