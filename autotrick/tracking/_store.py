"""The MLflow store: where it is (the --tracking-uri flag, else MLFLOW_TRACKING_URI, else a local
sqlite file), which experiment holds a search (MLFLOW_EXPERIMENT_NAME, else the search's name),
the tags that mark autotrick's runs, and the queries that find a search's runs again. Shared by
the writer and the readers; MLflow itself is imported lazily (about 2 s)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autotrick.atomic import write_bytes_atomically
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
TAG_SEARCH_RUN = "autotrick.search_run_id"  # on a model version: the search (parent run) that registered it
TAG_NOTE = "mlflow.note.content"  # the run's (or experiment's) description in the MLflow UI


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
# A tracking server that stops answering must not hold a search for minutes: MLflow retries each
# request 7 times with a doubling backoff (about 4 minutes) and waits 120 s for an answer. Three
# tries within a few seconds, and 30 s for an answer, say "gone" soon enough; the search's end
# tries again anyway. Its "🏃 View run ... at: URL" lines would fall among the trial lines.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
logging.getLogger("alembic").setLevel(logging.WARNING)
# Its SQL store logs each failed statement's traceback before raising it (a full disk: hundreds of
# lines); the writer says the failure in one line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


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
    write_bytes_atomically(path, template.read_bytes())  # a kill mid-copy leaves no torn store


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
    """A store to read from: it must exist (opening a missing sqlite file would silently create an
    empty store, seconds of migrations) and be an MLflow store (check_store)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ConfigError(f"no MLflow store at {uri} ({path} does not exist): run `autotrick search` "
                          "first, or pass --tracking-uri")
    check_store(uri)


# The tables by which an sqlite file is known as MLflow's (its schema migrations and its experiments).
_MLFLOW_TABLES = frozenset({"alembic_version", "experiments"})
_SERVER_TIMEOUT_S = 5
_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def check_store(uri: str) -> None:
    """Refuse, before anything is created in it, a store that is not MLflow's or not sane: MLflow
    would add its 65 tables to another application's sqlite database, and a damaged one fails
    deep inside SQLAlchemy. An absent or empty sqlite file is fine (MLflow creates its tables);
    a tracking server must answer. With sqlite3 and urllib only: MLflow takes 2 s to import."""
    scheme = "databricks" if uri == "databricks" else urllib.parse.urlsplit(uri).scheme.partition("+")[0]
    path = sqlite_path(uri)
    if scheme not in _SCHEMES or (scheme == "sqlite" and path is None and ":memory:" not in uri):
        raise ConfigError(f"--tracking-uri {uri}: not an MLflow tracking URI; expected sqlite:///PATH (a file "
                          "here), http(s)://HOST:PORT (a tracking server), file:PATH, postgresql://, mysql://, "
                          "mssql:// or databricks")
    if path is not None:
        _check_sqlite_store(uri, path)
    elif is_server(uri):
        _check_server(uri)


# The stores MLflow's tracking client takes (postgresql+psycopg2: postgresql); a bare path, which
# MLflow would take as a folder for its file store, must say file: (mlflow.db is a folder there)
_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def _check_sqlite_store(uri: str, path: Path) -> None:
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    refuse = f"--tracking-uri {uri}: {path.resolve()}"
    if not path.is_file():
        raise ConfigError(f"{refuse} is not a file; pass an MLflow sqlite store, e.g. sqlite:///mlflow.db")
    with path.open("rb") as file:
        if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            raise ConfigError(f"{refuse} is not an SQLite database, so not an MLflow store; pass another "
                              "--tracking-uri, or move the file away")
    tables, check = _read_store(path)
    if tables and not tables >= _MLFLOW_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigError(f"{refuse} is another application's SQLite database (tables: {shown}), not an MLflow "
                          "store; pass another --tracking-uri, e.g. sqlite:///mlflow-autotrick.db")
    if check != "ok":
        raise ConfigError(f"{refuse}: the SQLite database is damaged ({' '.join(check.split())}); restore the "
                          "MLflow store from a backup, or pass another --tracking-uri")


def _read_store(path: Path) -> tuple[set[str], str]:
    """The database's tables and its quick_check verdict (or the error that stopped the reading).
    Read-only, never creating or changing anything, but for one case: a process killed in the
    middle of a transaction (kill -9 while MLflow wrote) leaves a hot journal, which SQLite rolls
    back on the first read, and only a writable connection may (MLflow's own would, first thing)."""
    try:
        try:
            return _tables_and_check(path, "ro")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_READONLY_ROLLBACK:
                raise
            return _tables_and_check(path, "rw")
    except sqlite3.DatabaseError as error:
        return set(), str(error)


def _tables_and_check(path: Path, mode: str) -> tuple[set[str], str]:
    """The database's tables and its quick_check verdict, opened in `mode` (ro or rw: never created)."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # quick_check reads every page (0.4 s for 80 MB): a store damaged anywhere is said now.
        return tables, str(db.execute("PRAGMA quick_check").fetchone()[0]) if tables else "ok"


def _check_server(uri: str) -> None:
    """Any HTTP answer will do (the server's own errors are its to say); no answer is refused."""
    why = server_silence(uri)
    if why is not None:
        raise ConfigError(f"--tracking-uri {uri}: no MLflow tracking server answers there ({why}); start it, or "
                          "pass another --tracking-uri")


def server_silence(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer within a few seconds; None when it does
    (any HTTP answer: the server's own errors are its to say)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_SERVER_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def is_server(uri: str) -> bool:
    """A tracking server (it has its UI already), not a store autotrick opens itself."""
    return uri.startswith(("http://", "https://"))


def same_store(uri: str) -> str:
    """What a tracking URI names: `sqlite:///mlflow.db` and `sqlite:////abs/mlflow.db` are one store."""
    path = sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None else uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def search_names(client: MlflowClient) -> str:
    names = [e.name for e in client.search_experiments() if e.name != "Default"]
    return ", ".join(sorted(names)) or "none"


@contextlib.contextmanager
def fluent_api_on(tracking_uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Point MLflow's fluent API (which log_model, load_model and the registry use) at `tracking_uri`
    (and `experiment_id`: log_model files its LoggedModel under the active experiment, not the
    run's), then put back MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID: MLflow exports them for
    subprocesses, and left set they would send every later `autotrick` started from this process
    to this store."""
    import mlflow

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    mlflow.set_tracking_uri(tracking_uri)
    if experiment_id is not None:
        mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]  # None: back to the default (untyped)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
