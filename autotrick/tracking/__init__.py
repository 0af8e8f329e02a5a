"""MLflow, and only here: a search as a parent run with one child run per trial, its plots, the
recipe and, on request, the best model in the registry; reading recipes back; the UI.

One private module per job, re-exported here (as optuna.pruners does):
_store (where the store is, tags, queries), _writer (the background writer the search talks to),
_runs (the runs themselves), _plots, _read (recipes back from runs:/ and models:/), _ui.
"""

from autotrick.tracking._ablation import log_ablation
from autotrick.tracking._read import (
    export_recipe_text,
    fetch_checkpoint,
    fetch_recipe_text,
    load_model,
    load_recipe,
)
from autotrick.tracking._store import (
    CHAMPION,
    DEFAULT_TRACKING_URI,
    TAG_BASELINE,
    TAG_BEST,
    TAG_BEST_RUN,
    TAG_IMPORTANCE,
    TAG_NOTE,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_REASON,
    TAG_ROLE,
    TAG_SEARCH,
    TAG_TRIAL,
    check_store,
    is_server,
    resolve_tracking_uri,
    same_store,
)
from autotrick.tracking._ui import serve_ui, ui_url
from autotrick.tracking._writer import SearchTracker

__all__ = [
    "CHAMPION", "DEFAULT_TRACKING_URI", "TAG_BASELINE", "TAG_BEST", "TAG_BEST_RUN",
    "TAG_IMPORTANCE", "TAG_NOTE", "TAG_OUTCOME", "TAG_PARENT", "TAG_REASON", "TAG_ROLE", "TAG_SEARCH",
    "TAG_TRIAL", "SearchTracker", "check_store", "export_recipe_text", "fetch_checkpoint", "fetch_recipe_text",
    "is_server", "load_model", "load_recipe", "log_ablation", "resolve_tracking_uri", "same_store", "serve_ui",
    "ui_url",
]
