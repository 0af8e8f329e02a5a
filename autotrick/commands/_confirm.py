"""A search's confirmation, as `autotrick search` runs it while its Ray is still up: the top
recipes and the baseline over seeds (autotrick.confirm), a line per seeded run, the table and
the verdict, and the recipe that carries them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from autotrick.confirm import BASELINE, Confirmation, confirm
from autotrick.errors import ConfigError
from autotrick.params import Value
from autotrick.recipe import Recipe
from autotrick.records import SearchResult, TrialRecord
from autotrick.seeded import RunJournal, SeedScores

UNCONFIRMED = "unconfirmed"  # the registry alias of a winner that did not beat the baseline beyond seed noise


def check_confirm_options(top: int | None, seeds: int | None) -> None:
    """--confirm-top and --confirm-seeds, before anything starts."""
    if top is not None and top < 1:
        raise ConfigError(f"--confirm-top {top}: must be at least 1 (default 3), or use --no-confirm")
    if seeds is not None and seeds < 2:
        raise ConfigError(f"--confirm-seeds {seeds}: a paired test needs at least 2 seeds (default 5), "
                          "or use --no-confirm")


def seed_scores(options: Any, *, seeds: int, deadline: float | None,
                on_run: Callable[[dict[str, Value], int, TrialRecord], None] | None = None) -> SeedScores:
    """Seeded runs of the search's recipes through the search's Ray, kept in its folder; the
    search's time budget, if any, ends at `deadline` (time.monotonic)."""
    from autotrick.search import SeededRun, run_seeded

    def run_batch(runs: list[tuple[dict[str, Value], int]],
                  done: Callable[[dict[str, Value], int, TrialRecord], None]) -> None:
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        run_seeded(options, [SeededRun(values, seed) for values, seed in runs],
                   lambda run, record: done(run.values, run.seed, record), time_budget_s=left)

    budget = options.space.budget
    return SeedScores(RunJournal.open(options.state_dir), run_batch, seeds=seeds, base_seed=options.train.seed,
                      epochs=budget.max_epochs, mode=budget.mode, on_run=on_run)


class RunPrinter:
    """One line per seeded run as it ends, naming its recipe (`names`: by values; else what it
    changes from `baseline`)."""

    def __init__(self, label: str, metric: str, names: dict[str, str],
                 baseline: dict[str, Value] | None = None) -> None:
        self.label, self.metric, self.names, self.done = label, metric, names, 0
        self.baseline = baseline

    def _name(self, values: dict[str, Value]) -> str:
        from autotrick.ablate import trick_groups

        if _key(values) in self.names or self.baseline is None:
            return self.names.get(_key(values), "recipe")
        return "+".join(g.name for g in trick_groups(values, self.baseline)) or BASELINE

    def __call__(self, values: dict[str, Value], seed: int, record: TrialRecord) -> None:
        self.done += 1
        name = self._name(values)
        value = f"{record.metric:.4f}" if record.metric is not None else "  -   "
        why = f" ({record.reason})" if record.reason else ""
        click.echo(f"{self.label} {self.done:>3}  {name:<14} seed {seed:<3} {self.metric} {value}  "
                   f"{record.epochs:>3} ep  {record.outcome}{why}")


def _key(values: dict[str, Value]) -> str:
    return repr(sorted(values.items(), key=lambda kv: kv[0]))


def run_confirmation(options: Any, result: SearchResult, *, top: int, seeds: int,
                     deadline: float | None) -> tuple[Confirmation | None, bool, SeedScores | None]:
    """Confirm the search's winner; returns the confirmation and whether every seeded run ended
    (False: cut off by the time budget or a signal; --resume re-runs only the missing ones)."""
    from autotrick.confirm import candidates

    chosen = candidates(result, top)
    if result.baseline is None or not chosen:
        why = "the baseline has no result" if result.baseline is None else \
            "no recipe other than the baseline's trained its whole budget"
        click.echo(f"confirmation: nothing to confirm ({why})")
        return None, True, None
    names = {_key(result.baseline.values): BASELINE, **{_key(r.values): f"trial {r.number}" for r in chosen}}
    started = time.perf_counter()
    scores = seed_scores(options, seeds=seeds, deadline=deadline,
                         on_run=RunPrinter("confirm", result.info.metric, names))
    click.echo(f"confirming the top {len(chosen)} recipes and the baseline over {seeds} paired seeds at "
               f"{options.space.budget.max_epochs} epochs")
    confirmation = confirm(result, scores, top=top)
    recipes = {BASELINE: result.baseline.values, **{str(r.number): r.values for r in chosen}}
    complete = scores.complete(recipes)
    if confirmation is not None:
        confirmation.seconds = time.perf_counter() - started
    return confirmation, complete, scores


def confirmed_recipe(recipe: Recipe, confirmation: Confirmation, result: SearchResult) -> Recipe:
    """The recipe of the confirmed winner (the best mean over seeds, which may not be the search's
    single best trial), carrying the confirmation as `provenance.confirmed`."""
    winner = confirmation.winner
    provenance = {**recipe.provenance, "confirmed": confirmation.to_dict()}
    if winner is None or winner.trial is None or winner.trial == recipe.provenance.get("trial"):
        return Recipe(tricks=recipe.tricks, training=recipe.training, provenance=provenance)
    record = next(r for r in result.records if r.number == winner.trial)
    provenance.update(trial=record.number, value=record.metric, search_best_trial=recipe.provenance.get("trial"))
    training = {**recipe.training, "precision": record.values.get("precision.dtype", "fp32")}
    return Recipe(tricks=dict(record.values), training=training, provenance=provenance)


def confirmation_lines(confirmation: Confirmation) -> list[str]:
    lines = [f"confirmation: {confirmation.seeds} paired seeds x {len(confirmation.rows)} recipes at "
             f"{confirmation.epochs} epochs, {confirmation.trained} runs trained in {confirmation.seconds:.1f}s "
             "(the rest reused from the search or an earlier session)", *confirmation.table()]
    return [*lines, confirmation.verdict()]
