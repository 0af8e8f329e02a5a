"""The deployable model in MLflow: which run's model an export starts from, and the ONNX models
(FP32 and INT8) logged on that run with a signature and an input example, registered as versions
of one registered model whose aliases say which (champion-onnx, champion-int8), with the
measurements as the run's metrics and the export report as its artifact."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotrick.errors import ConfigError
from autotrick.tracking._read import MODEL_ARTIFACT
from autotrick.tracking._store import (
    CHAMPION,
    TAG_BEST_RUN,
    TAG_ROLE,
    find_experiment_id,
    fluent_api_on,
    latest_parent,
    open_client,
    resolve_tracking_uri,
    search_names,
)

if TYPE_CHECKING:
    import numpy as np

ONNX_ALIASES = {"onnx": f"{CHAMPION}-onnx", "int8": f"{CHAMPION}-int8"}  # form -> registered alias
REPORT_ARTIFACT = "deploy/export_report.json"


@dataclass(frozen=True)
class ModelSource:
    """Where an export's model comes from: a reference load_model reads, the recipe beside it (if
    any), and the run to log the ONNX models on (None: a checkpoint file)."""

    model_ref: str
    recipe_ref: str | None
    run_id: str | None
    registered_name: str | None = None  # models:/NAME@alias: log the ONNX versions under NAME


def model_source(*, search_name: str | None = None, run_id: str | None = None, model_ref: str | None = None,
                 tracking_uri: str | None = None) -> ModelSource:
    """The model of a search's best trial, of a run (a search's parent run: its best trial), or
    of a reference (models:/NAME@alias, models:/NAME/version, runs:/RUN_ID[/model], a checkpoint)."""
    from autotrick.checkpoint import is_mlflow_ref

    if model_ref is not None and not is_mlflow_ref(model_ref):
        return ModelSource(model_ref, None, None)
    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    if model_ref is not None and model_ref.startswith("models:/"):
        from autotrick.tracking._read import _model_run_id, _parse_model_ref

        return ModelSource(model_ref, model_ref, _model_run_id(client, model_ref, uri), _parse_model_ref(model_ref)[0])
    if model_ref is not None:
        run_id = model_ref.removeprefix("runs:/").partition("/")[0]
    if search_name is not None:
        experiment_id = find_experiment_id(client, search_name)
        parent = latest_parent(client, experiment_id, search_name) if experiment_id else None
        if parent is None:
            raise ConfigError(f"no search named '{search_name}' in {uri}; searches there: {search_names(client)}")
        run_id = parent.info.run_id
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(str(run_id))
    except MlflowException:
        raise ConfigError(f"--run {run_id}: no such run in {uri}") from None
    if run.data.tags.get(TAG_ROLE) == "parent":
        best = run.data.tags.get(TAG_BEST_RUN)
        if best is None:
            raise ConfigError(f"search run {run_id} has no best trial: no trial succeeded, or it is unfinished")
        run_id = best
    return ModelSource(f"runs:/{run_id}/{MODEL_ARTIFACT}", f"runs:/{run_id}", str(run_id))


def log_deployment(source: ModelSource, report: dict[str, Any], measurements: dict[str, float],
                   files: dict[str, Path], example: np.ndarray, *, register: str | None = None,
                   tracking_uri: str | None = None) -> list[str]:
    """Log each ONNX file of `files` (form -> path: "onnx", "int8") on the source's run, with a
    signature and `example` as input example; register them under `register` (or the source's
    registered name) with ONNX_ALIASES; the measurements as metrics, the report as an artifact.
    Returns one line per thing done, for the terminal."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    from autotrick.deploy import INPUT, onnx_session

    assert source.run_id is not None
    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    name = register or source.registered_name
    experiment_id = client.get_run(source.run_id).info.experiment_id
    done = []
    with fluent_api_on(uri, experiment_id):
        for form, path in files.items():
            outputs = onnx_session(path).run(None, {INPUT: example})[0]
            logged = mlflow.onnx.log_model(
                onnx.load(str(path)), name=f"onnx-{form}" if form != "onnx" else "onnx", run_id=source.run_id,
                registered_model_name=name, signature=infer_signature(example, outputs), input_example=example,
                save_as_external_data=False, pip_requirements=mlflow.onnx.get_default_pip_requirements())
            if name is not None:
                version = str(logged.registered_model_version)
                client.set_registered_model_alias(name, ONNX_ALIASES[form], version)
                done.append(f"{form}: registered as {name} version {version}, alias {ONNX_ALIASES[form]} "
                            f"(models:/{name}@{ONNX_ALIASES[form]})")
            else:
                done.append(f"{form}: logged on run {source.run_id} ({logged.model_uri})")
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(source.run_id, metrics=[Metric(key, float(value), now, 0) for key, value in measurements.items()])
    client.log_text(source.run_id, json.dumps(report, indent=2), REPORT_ARTIFACT)
    return done
