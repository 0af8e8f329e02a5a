"""`autotrick train`: one training run, a line per epoch."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import click

from autotrick.commands._format import measurements_text, tricks_text
from autotrick.commands._inputs import check_model_and_data, resolve_model_files
from autotrick.trainer import EpochReport, TrainConfig, run_trial


def format_epoch(r: EpochReport) -> str:
    return (f"epoch {r.epoch:>3}  train_loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}  "
            f"val_acc {r.val_accuracy:.4f}  lr {r.lr:.4g}  {r.seconds:.2f}s  {r.images_per_s:,.0f} img/s")


def run_train(*, model: str | None, data: str | None, data_dir: str | None, seed: int, device: str,
              epochs: int | None, batch_size: int | None, recipe_ref: str | None,
              sets: Mapping[str, Any], data_mode: str = "auto", weights: str | None = None,
              skip_bad_images: bool = False) -> None:
    """Validate everything, then train once and print one line per epoch and a summary."""
    from autotrick.data import absolute_data_spec, check_data_mode, plan_data
    from autotrick.data.bad_images import skipped_line
    from autotrick.data.image_folder import skipped_images
    from autotrick.device import resolve_device
    from autotrick.space import resolve_values

    device, data_mode = resolve_device(device), check_data_mode(data_mode)

    given: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if recipe_ref:
        from autotrick.tracking import load_recipe

        recipe = load_recipe(recipe_ref)
        given.update(recipe.tricks)
        settings = recipe.training
    given.update(sets)
    values = resolve_values(given, "--set" if not recipe_ref else "recipe")
    config = TrainConfig(
        model=model or settings.get("model") or "cnn", data=data or settings.get("data") or "digits",
        data_dir=data_dir, epochs=epochs or settings.get("epochs") or 15,
        batch_size=batch_size or settings.get("batch_size") or 64,
        seed=seed if not recipe_ref or seed else settings.get("seed", seed), device=device,
        skip_bad_images=skip_bad_images)
    if device == "cpu":  # re-running a recipe's own trial: its thread count, for the same numbers
        same_trial = (config.model, config.data) == (settings.get("model"), settings.get("data"))
        config = replace(config, threads=(settings.get("threads") if same_trial else None) or os.cpu_count())
    # Fails here, before anything is printed or trained: a missing folder, a user function that
    # raises; a data set too big for memory streams.
    plan = plan_data(check_model_and_data(config.model, config.data, config.data_dir,
                                          skip_bad_images=skip_bad_images), data_mode, device=config.device)
    config = replace(config, data_mode=plan.mode)
    weights = weights or settings.get("weights")
    if weights or values.get("distill.teacher"):
        spec, weights_file, teachers = resolve_model_files(
            model=model and config.model, default_model=config.model, data=config.data, data_dir=config.data_dir,
            weights=weights, teacher=values.get("distill.teacher"), tracking_uri=None)
        config = replace(config, model=spec, weights=weights_file, teachers=teachers)
    changed = {k: v for k, v in values.items() if k in given}
    click.echo(f"train {config.model} on {config.data}, {config.epochs} epochs, batch {config.batch_size}, "
               f"seed {config.seed}, {config.device}, {plan.describe()}; "
               f"tricks: {tricks_text(changed) or 'none (the baseline)'}")
    if skip_bad_images and (skipped := skipped_line(skipped_images(absolute_data_spec(config.data)))):
        click.echo(skipped)
    started = time.perf_counter()
    result = run_trial(values, config, lambda r: click.echo(format_epoch(r)), on_prepared=_print_prepared)
    summary = (f"{result.outcome}: val_accuracy {result.val_accuracy:.4f}  val_loss {result.val_loss:.4f}  "
               f"epochs {result.epochs_run}  training {result.train_seconds:.2f}s "
               f"(with setup {time.perf_counter() - started:.2f}s)")
    if result.measurements:
        summary += "  " + measurements_text(result.measurements)
    click.echo(summary + (f"  ({result.reason})" if result.reason else ""))
    if result.outcome.failed:
        raise SystemExit(1)


def _print_prepared(notes: list[str], warning: str) -> None:
    """What the model-side tricks did, and the model check's warning, before the first epoch."""
    for note in notes:
        click.echo(f"note: {note}")
    if warning:
        click.echo(f"warning: {warning}")
