"""Ablation: which of a recipe's tricks did the work. For every trick where the recipe differs
from the baseline (a conditional parameter goes with its parent: GroupNorm's groups with
`norm.type`), the recipe without it and the baseline with only it, each over the same paired
seeds (autotrick.seeded), plus the greedy path from the baseline to the recipe that adds, at each
step, the trick that gains most (Fawcett and Hoos, "Analysing differences between algorithm
configurations through ablation", J. Heuristics 2016). The minimal recipe is the shortest prefix
of that path whose mean lies within the full recipe's interval.

Changes are signed so that > 0 is better (for a loss too); p-values are the paired t-test's,
Holm-corrected over the tricks within each column (autotrick.stats).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotrick.errors import ConfigError
from autotrick.params import Value
from autotrick.seeded import SeedScores, paired
from autotrick.stats import ALPHA, holm, mean_interval, p_text, paired_comparison


class CutOff(Exception):
    """Some seeded runs did not end (a signal, a time budget): run the ablation again to finish;
    the finished ones are kept."""


def _scores(scores: SeedScores, configs: Mapping[str, Mapping[str, Value]]) -> dict[str, list[float | None]]:
    found = scores.scores(configs)
    if not scores.complete(configs):
        raise CutOff(f"{len(scores.missing(configs))} seeded runs did not end")
    return found


@dataclass(frozen=True)
class Group:
    """One trick as the ablation moves it: a root parameter and the conditional ones under it."""

    name: str                # the root parameter, e.g. "norm.type"
    keys: tuple[str, ...]    # every parameter of the family, e.g. ("norm.type", "norm.groups")
    shown: str               # the recipe's values, for reading: "group (groups 8)"


def _root(key: str) -> str:
    from autotrick.tricks import all_params

    params = all_params()
    while (when := params[key].when) is not None:
        key = f"{key.split('.')[0]}.{when.param}"
    return key


def trick_groups(recipe: Mapping[str, Value], baseline: Mapping[str, Value]) -> list[Group]:
    """The tricks where `recipe` differs from `baseline`, each with its conditional parameters."""
    from autotrick.params import value_text
    from autotrick.tricks import all_params

    roots: dict[str, None] = {}
    for key in list(recipe) + [k for k in baseline if k not in recipe]:
        if recipe.get(key) != baseline.get(key):
            roots.setdefault(_root(key), None)
    groups = []
    for root in roots:
        family = tuple(k for k in all_params() if _root(k) == root)
        extra = [f"{k.split('.')[1]} {value_text(recipe[k])}" for k in family if k != root and k in recipe
                 and recipe.get(k) != baseline.get(k)]
        shown = value_text(recipe.get(root)) + (f" ({', '.join(extra)})" if extra else "")
        groups.append(Group(root, family, shown))
    return groups


def combine(recipe: Mapping[str, Value], baseline: Mapping[str, Value], take: list[Group]) -> dict[str, Value]:
    """The baseline with the recipe's values of the groups in `take`, walked define-by-run (a
    conditional parameter whose parent is now off is dropped, one now on takes its default)."""
    from autotrick.space import resolve_values

    values = {k: v for k, v in baseline.items()}
    for group in take:
        for key in group.keys:
            values.pop(key, None)
            if key in recipe:
                values[key] = recipe[key]
    return resolve_values(values, "ablation")


@dataclass
class Change:
    """A paired change over the seeds: its mean, interval, and Holm-corrected p."""

    mean: float
    low: float
    high: float
    p: float
    p_adjusted: float = 1.0

    @property
    def significant(self) -> bool:
        return self.p_adjusted < ALPHA and (self.low > 0 or self.high < 0)

    def text(self) -> str:
        mean = self.mean if abs(self.mean) >= 5e-5 else 0.0  # no "-0.0000"
        return f"{mean:+.4f} ± {(self.high - self.low) / 2:.4f}"


@dataclass
class Row:
    group: Group
    removed: Change | None = None   # recipe without it - recipe
    added: Change | None = None     # baseline with only it - baseline
    step: int | None = None         # its place on the greedy path (1: added first)
    path_mean: float | None = None  # the path's mean once it is added


@dataclass
class Ablation:
    metric: str
    mode: str
    seeds: int
    rows: list[Row]
    recipe_mean: float
    recipe_low: float
    recipe_high: float
    baseline_mean: float
    minimal: list[str] = field(default_factory=list)   # the root parameters of the minimal recipe
    trained: int = 0

    def table(self) -> list[list[str]]:
        head = ["trick", "value", "change when removed ± 95%", "p (Holm)", "change when added alone ± 95%",
                "p (Holm)", "path step", f"path {self.metric}", "in minimal"]
        body = [[row.group.name, row.group.shown,
                 row.removed.text() if row.removed else "-", p_text(row.removed.p_adjusted) if row.removed else "-",
                 row.added.text() if row.added else "-", p_text(row.added.p_adjusted) if row.added else "-",
                 str(row.step) if row.step else "-", f"{row.path_mean:.4f}" if row.path_mean is not None else "-",
                 "yes" if row.group.name in self.minimal else "no"] for row in self.rows]
        return [head, *body]

    def text(self) -> str:
        table = self.table()
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                 for line in table]
        return "\n".join([*lines, self.summary()])

    def summary(self) -> str:
        kept = ", ".join(self.minimal) or "none (the baseline alone reaches the recipe's interval)"
        return (f"recipe {self.metric} {self.recipe_mean:.4f} (95% interval {self.recipe_low:.4f} to "
                f"{self.recipe_high:.4f}, {self.seeds} paired seeds), baseline {self.baseline_mean:.4f}; "
                f"minimal recipe: {kept}")

    def csv(self) -> str:
        out = io.StringIO()
        csv.writer(out).writerows(self.table())
        return out.getvalue()

    def markdown(self) -> str:
        table = self.table()
        lines = ["| " + " | ".join(table[0]) + " |", "|" + " --- |" * len(table[0])]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in table[1:]]
        return "\n".join([*lines, "", self.summary() + "."])

    def to_dict(self) -> dict[str, Any]:
        """What the recipe keeps as `provenance.ablation`."""
        return {"seeds": self.seeds, "minimal": self.minimal, "summary": self.summary(), "table": self.table()}


def _change(mine: list[float | None], theirs: list[float | None], sign: float) -> Change | None:
    a, b = paired(mine, theirs)
    if len(a) < 2:
        return None
    test = paired_comparison([sign * x for x in a], [sign * y for y in b])
    return Change(test.difference.mean, test.difference.low, test.difference.high, test.p)


def _correct(changes: list[Change | None]) -> None:
    present = [c for c in changes if c is not None]
    for change, adjusted in zip(present, holm([c.p for c in present]), strict=True):
        change.p_adjusted = adjusted


def ablate(recipe: Mapping[str, Value], baseline: Mapping[str, Value], scores: SeedScores, *,
           metric: str) -> Ablation:
    """Train what the ablation needs over the seeds (what the journal lacks only) and measure it."""
    groups = trick_groups(recipe, baseline)
    if not groups:
        raise ConfigError("the recipe equals the baseline: there is no trick to ablate")
    sign = 1.0 if scores.mode == "max" else -1.0
    full, base = combine(recipe, baseline, groups), combine(recipe, baseline, [])
    configs: dict[str, dict[str, Value]] = {"recipe": full, "baseline": base}
    for group in groups:
        configs[f"-{group.name}"] = combine(recipe, baseline, [g for g in groups if g is not group])
        configs[f"+{group.name}"] = combine(recipe, baseline, [group])
    results = _scores(scores, configs)
    rows = [Row(group, removed=_change(results[f"-{group.name}"], results["recipe"], sign),
                added=_change(results[f"+{group.name}"], results["baseline"], sign)) for group in groups]
    _correct([row.removed for row in rows])
    _correct([row.added for row in rows])

    def mean(name: str) -> float:
        present = [s for s in results[name] if s is not None]
        return sum(present) / len(present) if present else float("-inf") * sign

    # the greedy path: each step adds the trick whose addition gives the best mean
    chosen: list[Group] = []
    by_group = {row.group.name: row for row in rows}
    while len(chosen) < len(groups):
        left = [g for g in groups if g not in chosen]
        step = {g.name: combine(recipe, baseline, [*chosen, g]) for g in left}
        step_scores = _scores(scores, step)
        results.update(step_scores)
        best = max(left, key=lambda g: sign * mean(g.name))
        chosen.append(best)
        by_group[best.name].step = len(chosen)
        by_group[best.name].path_mean = mean(best.name)
    full_scores = [s for s in results["recipe"] if s is not None]
    interval = mean_interval(full_scores)
    threshold = interval.low if sign > 0 else interval.high
    minimal: list[str] = [g.name for g in chosen]
    if sign * mean("baseline") >= sign * threshold:
        minimal = []
    else:
        for count, group in enumerate(chosen, start=1):
            if sign * (by_group[group.name].path_mean or 0) >= sign * threshold:
                minimal = [g.name for g in chosen[:count]]
                break
    rows.sort(key=lambda row: row.step or len(rows) + 1)
    return Ablation(metric, scores.mode, scores.seeds, rows, interval.mean, interval.low, interval.high,
                    mean("baseline"), minimal, trained=scores.trained)


def minimal_values(recipe: Mapping[str, Value], baseline: Mapping[str, Value], ablation: Ablation) -> dict[str, Value]:
    groups = [g for g in trick_groups(recipe, baseline) if g.name in ablation.minimal]
    return combine(recipe, baseline, groups)
