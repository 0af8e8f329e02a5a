"""`autotrick export --onnx FILE [--int8]`: a trained model as a verified ONNX file (and INT8),
measured, recorded in MLflow (when it came from there) and in its recipe."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autotrick.atomic import write_text_atomically
from autotrick.errors import ConfigError

_NEEDS = "pip install 'autotrick[deploy]' (onnx, onnxruntime, onnxscript)"


def check_deploy_installed() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"--onnx needs {', '.join(missing)}: {_NEEDS}")


def run_onnx_export(*, search_name: str | None, run_id: str | None, model_ref: str | None, onnx: str,
                    int8: bool, output: str | None, data: str | None, data_dir: str | None,
                    register: str | None, tracking_uri: str | None) -> None:
    """Validate everything before MLflow or the model is touched, then export, verify, measure,
    print the report and record it."""
    if sum(x is not None for x in (search_name, run_id, model_ref)) != 1:
        raise ConfigError("export --onnx: give exactly one of --name SEARCH, --run RUN_ID or --model REF "
                          "(models:/NAME@alias, runs:/RUN_ID, a checkpoint .pt)")
    onnx_path = Path(onnx)
    if onnx_path.suffix != ".onnx":
        raise ConfigError(f"--onnx {onnx}: expected a file name ending in .onnx")
    for option, path in (("--onnx", onnx_path), ("--output", Path(output) if output else None)):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{option} {path}: the folder {path.parent} does not exist")
    check_deploy_installed()
    if register is not None and model_ref is not None and not model_ref.startswith(("runs:/", "models:/")):
        raise ConfigError(f"--register {register}: the model is a file ({model_ref}), not a run's; MLflow "
                          "registers a run's model: export --name, --run or --model runs:/ / models:/")
    from autotrick.tracking import load_model, load_recipe
    from autotrick.tracking._deploy import model_source

    source = model_source(search_name=search_name, run_id=run_id, model_ref=model_ref, tracking_uri=tracking_uri)
    recipe = None
    if source.recipe_ref:
        try:
            recipe = load_recipe(source.recipe_ref, tracking_uri=tracking_uri)
        except ConfigError:
            if data is None:  # the recipe names the data set: without it, say what is missing
                raise
    data = data or (recipe.training.get("data") if recipe else None)
    if data is None:
        use = "calibration and validation" if int8 else "validation"
        raise ConfigError(f"--model {model_ref}: a checkpoint names no data set, and --onnx needs its {use} "
                          "images: give --data (the data set it was trained on)")
    import torch

    from autotrick.data import describe_data, open_feed
    from autotrick.deploy import deploy_model

    describe_data(data, data_dir)  # a one-line error for a data set that is not there
    model = load_model(source.model_ref, tracking_uri=tracking_uri)
    feed = open_feed(data, data_dir, device=torch.device("cpu"))
    report = deploy_model(model, feed, onnx_path, int8=int8,
                          qat=bool(recipe and recipe.tricks.get("quant.qat")))
    for line in report.lines():
        click.echo(line)
    report_path = onnx_path.with_suffix(".report.json")
    write_text_atomically(report_path, json.dumps(report.to_dict(), indent=2))
    click.echo(f"ONNX model written to {onnx_path}" + (f", INT8 to {report.int8_path}" if report.int8_path else "")
               + f"; report {report_path}")
    if not report.verified:
        raise SystemExit(1)  # measured and written for inspection, never recorded as deployable
    if recipe is not None:
        recipe.provenance["deployment"] = _rounded(report.measurements())
        recipe_path = Path(output) if output else onnx_path.with_suffix(".recipe.yaml")
        recipe.write(recipe_path)
        click.echo(f"recipe with the deployment's measurements written to {recipe_path}")
    if source.run_id is not None:
        from autotrick.augment import normalize
        from autotrick.tracking._deploy import log_deployment

        files = {"onnx": onnx_path, **({"int8": Path(report.int8_path)} if report.int8_path else {})}
        images, _ = next(iter(feed.val_batches()))
        example = normalize(images[:2], feed.mean, feed.std).numpy()  # MLflow's input example
        for line in log_deployment(source, report.to_dict(), report.measurements(), files, example,
                                   register=register, tracking_uri=tracking_uri):
            click.echo(f"MLflow: {line}")


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.6g}") for k, v in values.items()}
