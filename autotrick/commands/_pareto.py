"""A multi-objective search's Pareto front: its table in the terminal, one recipe per front point in
NAME.pareto/, and `autotrick show NAME.pareto/` listing them."""

from __future__ import annotations

from pathlib import Path

import click

from autotrick.commands._format import tricks_text
from autotrick.records import SearchResult, TrialRecord


def front_folder(output: Path) -> Path:
    """quick.recipe.yaml -> quick.pareto/ beside it."""
    return output.with_name(output.name.removesuffix(".yaml").removesuffix(".recipe") + ".pareto")


def front_lines(result: SearchResult, front: list[TrialRecord], hypervolume: float | None) -> list[str]:
    """The front as a table (one row per point, the baseline below it), and what it means."""
    from autotrick.objectives import DIRECTIONS

    names = result.info.objectives
    arrows = {"max": "↑", "min": "↓"}
    header = "  ".join(f"{n + arrows[DIRECTIONS[n]]:>14}" for n in names)
    lines = [f"Pareto front: {len(front)} of {sum(r.successful for r in result.records)} finished trials "
             f"(none of the others beats one of them in every objective)",
             f"{'trial':>7}  {header}  tricks"]
    baseline = result.baseline
    for record in [*front, *([baseline] if baseline is not None and baseline not in front else [])]:
        values = record.objective_values(names) or []
        cells = "  ".join(f"{_number(v):>15}" for v in values)
        tag = "baseline" if record.baseline else tricks_text(_changed(record.values)) or "-"
        mark = "" if record in front else " (not on the front)"
        lines.append(f"{'#' + str(record.number):>7}  {cells}  {tag}{mark}")
    if hypervolume is not None:
        lines.append(f"hypervolume ({names[0]} x {names[1]}, to 10% past the worst trial): {hypervolume:.4g}")
    lines.append(f"ASHA stopped trials on {names[0]} alone: a trial stopped early is not on the front, even if it "
                 "was fast or small")
    return lines


def write_front(result: SearchResult, front: list[TrialRecord], folder: Path, mlflow_run_id: str | None) -> list[Path]:
    """One recipe per front point, trial-NNNN.recipe.yaml, in `folder` (emptied of older front recipes first)."""
    from autotrick.recipe import Recipe

    folder.mkdir(exist_ok=True)
    for old in folder.glob("trial-*.recipe.yaml"):
        old.unlink()
    written = []
    for record in front:
        recipe = Recipe.from_search(result, mlflow_run_id=mlflow_run_id, record=record)
        if recipe is not None:
            written.append(recipe.write(folder / f"trial-{record.number:04d}.recipe.yaml"))
    return written


def show_front(folder: Path) -> None:
    """`autotrick show NAME.pareto/`: each front recipe with its objectives and the tricks it changed."""
    from autotrick.errors import ConfigError
    from autotrick.recipe import read_recipe_file

    files = sorted(folder.glob("*.recipe.yaml"))
    if not files:
        raise ConfigError(f"{folder}: no recipes in this folder; expected a search's NAME.pareto/ folder")
    click.echo(f"Pareto front in {folder}: {len(files)} recipes")
    for path in files:
        recipe = read_recipe_file(path)
        objectives = recipe.provenance.get("objectives") or {}
        values = "  ".join(f"{k} {_number(v)}" for k, v in objectives.items())
        click.echo(f"{path.name:<26} {values}  {tricks_text(_changed(recipe.tricks)) or 'baseline'}")


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"


def _changed(values: dict) -> dict:
    from autotrick.tricks import defaults

    baseline = defaults()
    return {k: v for k, v in values.items() if baseline.get(k) != v}


def finish_front(result: SearchResult, output: Path, parent_run_id: str | None, tracking_uri: str | None) -> list[str]:
    """After a complete multi-objective search: the front's recipes written, its plot and
    hypervolume in MLflow; returns the lines for the terminal."""
    from autotrick.objectives import front_hypervolume, pareto_front

    front = pareto_front(result)
    hypervolume = front_hypervolume(result, front) if front else None
    lines = front_lines(result, front, hypervolume)
    if not result.complete or not front:
        return lines
    folder = front_folder(output)
    written = write_front(result, front, folder, parent_run_id)
    lines.append(f"{len(written)} front recipes written to {folder}/ (list them with `autotrick show {folder}`)")
    if parent_run_id and hypervolume is not None:
        from autotrick.tracking._pareto import log_front

        log_front(parent_run_id, result, front, hypervolume, tracking_uri)
    return lines
