"""Reading back from MLflow: a recipe from runs:/ or models:/ (or a file), a search's best recipe,
a registered or logged model (or a checkpoint file), and that model as a local checkpoint."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autotrick.errors import ConfigError, first_line
from autotrick.recipe import RECIPE_FILE, Recipe, parse_recipe, read_recipe_file
from autotrick.tracking._store import (
    CHAMPION,
    find_experiment_id,
    fluent_api_on,
    latest_parent,
    open_client,
    resolve_tracking_uri,
    search_names,
)
from autotrick.userfiles import read_user_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch import nn

MODEL_ARTIFACT = "model"  # where a search logs the model it registers, on the best trial's run


def load_recipe(ref: str | Path, *, tracking_uri: str | None = None) -> Recipe:
    """A recipe from a file, runs:/<run_id>/recipe.yaml or models:/NAME@alias (MLflow at
    `tracking_uri`, default MLFLOW_TRACKING_URI or the local sqlite store)."""
    ref = str(ref)
    if ref.startswith(("runs:/", "models:/")):
        return parse_recipe(fetch_recipe_text(ref, tracking_uri), ref)
    return read_recipe_file(ref)


def fetch_recipe_text(ref: str, tracking_uri: str | None = None) -> str:
    """The recipe at runs:/<run_id>[/recipe.yaml] or models:/NAME@alias / models:/NAME/<version>
    (the recipe of the run that produced that model version)."""
    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    if ref.startswith("models:/"):
        return _artifact_text(client, _model_run_id(client, ref, uri), RECIPE_FILE, ref, uri)
    run_id, _, path = ref.removeprefix("runs:/").partition("/")
    return _artifact_text(client, run_id, path or RECIPE_FILE, ref, uri)


def export_recipe_text(*, search_name: str | None = None, run_id: str | None = None,
                       tracking_uri: str | None = None) -> str:
    """The best recipe of a run, or of the latest search of that name."""
    uri = resolve_tracking_uri(tracking_uri)
    if run_id:
        return fetch_recipe_text(f"runs:/{run_id}/{RECIPE_FILE}", uri)
    if not search_name:
        raise ConfigError("give a search name or a run id to export a recipe from")
    client = open_client(uri)
    experiment_id = find_experiment_id(client, search_name)
    parent = latest_parent(client, experiment_id, search_name) if experiment_id else None
    if parent is None:
        raise ConfigError(f"no search named '{search_name}' in {uri}; searches there: "
                          f"{search_names(client)}")
    return _artifact_text(client, parent.info.run_id, RECIPE_FILE, f"search '{search_name}'", uri)


def _artifact_text(client: MlflowClient, run_id: str, path: str, ref: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{ref}: no run '{run_id}' in {uri}; expected runs:/RUN_ID/{RECIPE_FILE} "
                          "with the id of a search's run or of its best trial") from None
    folder, _, _ = path.rpartition("/")
    present = [f.path for f in client.list_artifacts(run_id, folder or None)]
    if path not in present:
        kind = "a search or its best trial" if path == RECIPE_FILE else "the run"
        raise ConfigError(f"{ref}: run '{run.info.run_name}' ({run_id}) has no artifact '{path}'; "
                          f"expected the recipe of {kind} (artifacts there: {', '.join(present) or 'none'})")
    with tempfile.TemporaryDirectory() as tmp:
        return read_user_text(client.download_artifacts(run_id, path, tmp), ref, "a recipe .yaml")


def _model_run_id(client: MlflowClient, ref: str, uri: str) -> str:
    """The run behind models:/NAME@alias or models:/NAME/<version>."""
    from mlflow.exceptions import MlflowException

    name, alias, number = _parse_model_ref(ref)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        registered = ", ".join(m.name for m in client.search_registered_models()) or "none"
        message = f"{ref}: no registered model '{name}' in {uri} (registered: {registered})"
        raise ConfigError(message) from None
    if alias is not None:
        if alias not in model.aliases:
            raise ConfigError(f"{ref}: model '{name}' has no alias '{alias}'; its aliases: "
                              f"{', '.join(model.aliases) or 'none'}")
        number = model.aliases[alias]
    try:
        version = client.get_model_version(name, number)
    except MlflowException:
        raise ConfigError(f"{ref}: model '{name}' has no version '{number}'") from None
    if not version.run_id:
        raise ConfigError(f"{ref}: version {version.version} of '{name}' was not logged from a run, "
                          "so it has no recipe")
    return version.run_id


def _parse_model_ref(ref: str) -> tuple[str, str | None, str]:
    """models:/NAME@alias -> (NAME, alias, ""); models:/NAME/7 -> (NAME, None, "7")."""
    body = ref.removeprefix("models:/")
    alias: str | None = None
    if "@" in body:
        name, _, alias = body.partition("@")
        number = ""
    else:
        name, _, number = body.rpartition("/")
    if not name or not (alias or number):
        raise ConfigError(f"{ref}: expected models:/NAME@{CHAMPION} or models:/NAME/<version>")
    return name, alias, number



def load_model(ref: str | Path, *, tracking_uri: str | None = None) -> nn.Module:
    """A trained model, in eval mode: models:/NAME@alias or models:/NAME/<version>, runs:/RUN_ID[/model]
    (a search's registered model, or the model logged on a run), or an autotrick checkpoint file."""
    from autotrick.checkpoint import is_mlflow_ref, load_checkpoint  # torch: on first use only

    ref = str(ref)
    if not is_mlflow_ref(ref):
        return load_checkpoint(ref)
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    if ref.startswith("models:/"):
        _model_run_id(open_client(uri), ref, uri)  # a one-line error for a missing name, alias or version
        model_uri = ref
    else:
        run_id = ref.removeprefix("runs:/").partition("/")[0]
        model_uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    try:
        with fluent_api_on(uri):
            return mlflow.pytorch.load_model(model_uri, map_location="cpu").eval()
    except (MlflowException, OSError) as error:
        raise ConfigError(f"{ref}: no model there in {uri} ({first_line(error)}); expected a search's registered "
                          f"model, models:/NAME@{CHAMPION}, or runs:/RUN_ID/{MODEL_ARTIFACT}") from None


def fetch_checkpoint(ref: str, folder: Path, *, input_shape: tuple[int, int, int],
                     tracking_uri: str | None = None) -> Path:
    """The model behind an MLflow reference as an autotrick checkpoint in `folder` (a file a trial
    in another process can read): its weights, and its recipe's model spec and tricks to rebuild it.
    `input_shape` (C, H, W): the images it will see, which its recipe does not hold."""
    import torch

    from autotrick.checkpoint import save_checkpoint

    uri = resolve_tracking_uri(tracking_uri)
    model = load_model(ref, tracking_uri=uri)
    recipe_ref = ref if ref.startswith("models:/") else "runs:/" + ref.removeprefix("runs:/").partition("/")[0]
    recipe = load_recipe(recipe_ref, tracking_uri=uri)
    if "model" not in recipe.training:
        raise ConfigError(f"{ref}: its recipe names no model (training.model); expected a search's recipe")
    with torch.no_grad():
        num_classes = model(torch.zeros(2, *input_shape)).shape[1]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha1(f'{uri} {ref}'.encode()).hexdigest()[:16]}.pt"
    return save_checkpoint(path, model, spec=recipe.training["model"], tricks=recipe.tricks,
                           num_classes=num_classes, input_shape=input_shape)
