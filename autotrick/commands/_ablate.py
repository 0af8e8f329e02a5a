"""`autotrick ablate RECIPE` and `autotrick search --ablate`: the ablation (autotrick.ablate) run
on Ray through the seeded runs of the search's folder, printed as a table and written as CSV,
markdown, `NAME.minimal.recipe.yaml`, into the recipe and into MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from autotrick.ablate import Ablation, CutOff, ablate, minimal_values, trick_groups
from autotrick.commands._confirm import RunPrinter, seed_scores
from autotrick.errors import ConfigError
from autotrick.params import Value
from autotrick.recipe import Recipe
from autotrick.seeded import SeedScores


def run_ablation(recipe: Recipe, baseline: dict[str, Value], scores: SeedScores, *, metric: str,
                 stem: str) -> tuple[Ablation, Recipe]:
    """Ablate, print, and write `STEM.ablation.csv`, `.md` and `STEM.minimal.recipe.yaml`; returns
    the ablation and the minimal recipe."""
    groups = trick_groups(recipe.tricks, baseline)
    click.echo(f"ablating {len(groups)} trick{'s' * (len(groups) != 1)} ({', '.join(g.name for g in groups)}) "
               f"over {scores.seeds} paired seeds at {scores.epochs} epochs")
    ablation = ablate(recipe.tricks, baseline, scores, metric=metric)
    click.echo(ablation.text())
    Path(f"{stem}.ablation.csv").write_text(ablation.csv())
    Path(f"{stem}.ablation.md").write_text(ablation.markdown() + "\n")
    minimal = Recipe(tricks=minimal_values(recipe.tricks, baseline, ablation), training=dict(recipe.training),
                     provenance={**{k: v for k, v in recipe.provenance.items() if k not in ("confirmed", "ablation")},
                                 "minimal_of": stem, "kept": ablation.minimal})
    minimal.write(f"{stem}.minimal.recipe.yaml")
    click.echo(f"ablation written to {stem}.ablation.csv and {stem}.ablation.md; minimal recipe to "
               f"{stem}.minimal.recipe.yaml")
    return ablation, minimal


def log_to_mlflow(ablation: Ablation, minimal: Recipe, run_id: str | None, tracking_uri: str | None) -> None:
    from autotrick.tracking import log_ablation

    if run_id:
        log_ablation(ablation, run_id, tracking_uri=tracking_uri, minimal_yaml=minimal.to_yaml())


def ablate_recipe(ref: str, *, seeds: int | None, tracking_uri: str | None, num_cpus: int | None,
                  address: str | None, verbose: bool = False) -> None:
    """`autotrick ablate RECIPE`: every input checked before Ray starts."""
    from autotrick.commands._inputs import check_model_and_data
    from autotrick.data import absolute_data_spec
    from autotrick.device import gpus_per_trial
    from autotrick.entrypoints import absolute_spec
    from autotrick.search import ray_session
    from autotrick.search_options import SearchOptions
    from autotrick.space import Budget, SearchSpace, resolve_values
    from autotrick.state import STATE_ROOT
    from autotrick.tracking import load_recipe
    from autotrick.trainer import TrainConfig

    if seeds is not None and seeds < 2:
        raise ConfigError(f"--seeds {seeds}: a paired test needs at least 2 seeds (default 5)")
    recipe = load_recipe(ref, tracking_uri=tracking_uri)
    baseline = resolve_values({}, "the baseline")  # every trick off, walked as a recipe is
    if not trick_groups(recipe.tricks, baseline):
        raise ConfigError(f"recipe {ref}: equal to the baseline (every trick off); there is no trick to ablate")
    training, provenance = recipe.training, recipe.provenance
    metric = str(provenance.get("metric", "val_accuracy"))
    name = str(provenance.get("search") or Path(ref).stem.removesuffix(".recipe"))
    state_dir = (STATE_ROOT / name).resolve()  # the search's own folder: its confirmed seeds are reused
    epochs = int(training.get("epochs", 15))
    train = TrainConfig(model=absolute_spec(str(training.get("model", "cnn"))),
                        data=absolute_data_spec(str(training.get("data", "digits"))), epochs=epochs,
                        batch_size=int(training.get("batch_size", 64)), seed=int(training.get("seed", 0)))
    space = SearchSpace(name="ablation", source=str(ref), budget=Budget(trials=1, max_epochs=epochs,
                                                                        grace_epochs=1, metric=metric))
    gpus = gpus_per_trial(None, address=address)
    options = SearchOptions(name=name, space=space, train=train, state_dir=state_dir, address=address,
                            data_size=check_model_and_data(train.model, train.data, train.data_dir),
                            gpus_per_trial=None, num_cpus=num_cpus, verbose=verbose)
    options = options if gpus is None else options.with_gpus(gpus)  # auto on a cluster: settled once connected
    scores = seed_scores(options, seeds=seeds or 5, deadline=None,
                         on_run=RunPrinter("ablate", metric, {}, baseline))
    try:
        with ray_session(options):
            ablation, minimal = run_ablation(recipe, baseline, scores, metric=metric, stem=name)
    except CutOff as cut:
        raise click.ClickException(f"ablation cut off ({cut}): run the same command again to finish it; "
                                   "the finished runs are kept") from None
    if Path(ref).is_file():
        with_table = Recipe(recipe.tricks, recipe.training, {**provenance, "ablation": ablation.to_dict()})
        with_table.write(ref)
    log_to_mlflow(ablation, minimal, provenance.get("mlflow_run_id"), tracking_uri)


def ablate_after_search(options: Any, recipe: Recipe, baseline: dict[str, Value], scores: SeedScores,
                        metric: str) -> tuple[Ablation, Recipe] | None:
    """`search --ablate`: the confirmed winner, on the search's Ray, sharing its seeded runs."""
    if not trick_groups(recipe.tricks, baseline):
        click.echo("ablation: nothing to ablate (the baseline won)")
        return None
    scores.on_run = RunPrinter("ablate", metric, {}, baseline)
    try:
        return run_ablation(recipe, baseline, scores, metric=metric, stem=options.name)
    except CutOff as cut:
        click.echo(f"ablation cut off ({cut}): `autotrick ablate {options.name}.recipe.yaml` finishes it", err=True)
        return None
