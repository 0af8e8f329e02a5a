"""What the CLI commands do and print, kept apart from argument parsing (cli.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import click

from autotrick.params import Param
from autotrick.trainer import EpochReport, TrainConfig, run_trial


def list_tricks() -> None:
    from autotrick.tricks import TRICKS

    for trick in TRICKS:
        click.echo(f"{trick.name}: {trick.summary}")
        for p in trick.params:
            when = f"  (when {p.when})" if p.when else ""
            click.echo(f"  {trick.name}.{p.name:<20} default {p.default!s:<10} search {_range(p)}{when}")
            click.echo(f"  {'':<{len(trick.name) + 21}}{p.help}")


def _range(param: Param) -> str:
    if param.kind == "choice":
        return "{" + ", ".join(str(c) for c in param.choices) + "}"
    if param.kind == "bool":
        return "{false, true}"
    scale = " log" if param.log else ""
    return f"[{param.low:g}, {param.high:g}]{scale}"


def list_spaces() -> None:
    from autotrick.space import builtin_spaces, describe_space, load_space

    for name in builtin_spaces():
        click.echo(f"{name:<14} {describe_space(load_space(name))}")


def format_epoch(r: EpochReport) -> str:
    return (f"epoch {r.epoch:>3}  train_loss {r.train_loss:.4f}  val_loss {r.val_loss:.4f}  "
            f"val_acc {r.val_accuracy:.4f}  lr {r.lr:.4g}  {r.seconds:.2f}s  {r.images_per_s:,.0f} img/s")


def run_train(*, model: str | None, data: str | None, data_dir: str | None, seed: int, device: str,
              epochs: int | None, batch_size: int | None, recipe_ref: str | None,
              sets: Mapping[str, Any]) -> None:
    """Validate everything, then train once and print one line per epoch and a summary."""
    from autotrick.data import load_data
    from autotrick.space import resolve_values

    given: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if recipe_ref:
        from autotrick.recipe import load_recipe

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
        threads=os.cpu_count() if device == "cpu" else None)
    load_data(config.data, config.data_dir)  # a missing folder fails here, before anything trains
    changed = {k: v for k, v in values.items() if k in given}
    click.echo(f"train {config.model} on {config.data}, {config.epochs} epochs, batch {config.batch_size}, "
               f"seed {config.seed}, {config.device}; tricks: {_short(changed) or 'none (the baseline)'}")
    started = time.perf_counter()
    result = run_trial(values, config, lambda r: click.echo(format_epoch(r)))
    summary = (f"{result.outcome}: val_accuracy {result.val_accuracy:.4f}  val_loss {result.val_loss:.4f}  "
               f"epochs {result.epochs_run}  training {result.train_seconds:.2f}s "
               f"(with setup {time.perf_counter() - started:.2f}s)")
    if result.sparsity is not None:
        summary += f"  sparsity {result.sparsity:.3f}  nonzero params {result.nonzero_params:,}"
    click.echo(summary + (f"  ({result.reason})" if result.reason else ""))
    if result.outcome in ("diverged", "oom", "failed"):
        raise SystemExit(1)


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
