"""Confirmation: after a search, its top-k distinct recipes and the baseline are re-trained over
S seeds at the full epoch budget (autotrick.seeded), and compared pair by pair with the baseline
(autotrick.stats: paired t-test, Holm-corrected over the k recipes). The winner is the best mean;
the verdict says whether it beat the baseline beyond seed noise, in words and in
`provenance.confirmed` of the recipe, which MLflow, `autotrick show` and `--register` read.

Why 5 seeds by default: with fewer, the t interval's factor grows fast (t(0.975) is 4.3 at 3
seeds, 2.8 at 5, 2.3 at 10), so the interval is mostly the factor; with more, confirmation costs
more than the search it checks (benchmarks/trust.py measures it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autotrick.params import Value
from autotrick.records import SearchResult, TrialRecord
from autotrick.seeded import SeedScores, paired
from autotrick.stats import ALPHA, LEVEL, TEST_NAME, holm, mean_interval, p_text, paired_comparison

DEFAULT_TOP = 3
DEFAULT_SEEDS = 5
BASELINE = "baseline"


def candidates(result: SearchResult, top: int) -> list[TrialRecord]:
    """The `top` best distinct recipes among the trials that trained their whole budget, the
    baseline's own values left out (it is the reference)."""
    sign = 1 if result.info.mode == "max" else -1
    baseline = result.baseline.values if result.baseline else None
    seen: list[dict[str, Value]] = [baseline] if baseline is not None else []
    chosen: list[TrialRecord] = []
    for record in sorted((r for r in result.records if r.successful and not r.baseline),
                         key=lambda r: (-sign * r.metric, r.number)):  # type: ignore[operator]
        if record.values not in seen:
            seen.append(record.values)
            chosen.append(record)
        if len(chosen) == top:
            break
    return chosen


@dataclass
class Compared:
    """One recipe over the seeds: its scores, their mean and interval, and against the baseline
    (the signed gain: > 0 means better, for a loss too)."""

    name: str
    trial: int | None
    values: dict[str, Value]
    scores: list[float | None]
    mean: float
    sd: float
    low: float
    high: float
    gain: float | None = None
    gain_low: float | None = None
    gain_high: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    pairs: int = 0

    @property
    def significant(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < ALPHA and (self.gain or 0) > 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "values"}


def compare(scores: Mapping[str, list[float | None]], recipes: Mapping[str, Mapping[str, Value]],
            trials: Mapping[str, int | None], mode: str) -> list[Compared]:
    """The baseline (first) and every other recipe against it; Holm over the recipes compared."""
    sign = 1.0 if mode == "max" else -1.0
    rows: list[Compared] = []
    for name, values in recipes.items():
        present = [s for s in scores[name] if s is not None]
        if not present:
            continue
        interval = mean_interval(present)
        rows.append(Compared(name, trials.get(name), dict(values), scores[name], interval.mean, interval.sd,
                             interval.low, interval.high))
    base = next((r for r in rows if r.name == BASELINE), None)
    others = [r for r in rows if r.name != BASELINE]
    if base is not None:
        tested: list[Compared] = []
        for row in others:
            mine, theirs = paired(row.scores, base.scores)
            if len(mine) < 2:
                continue
            test = paired_comparison([sign * x for x in mine], [sign * y for y in theirs])
            row.gain, row.gain_low, row.gain_high = test.difference.mean, test.difference.low, test.difference.high
            row.p, row.pairs = test.p, test.n
            tested.append(row)
        for row, adjusted in zip(tested, holm([r.p for r in tested]), strict=True):  # type: ignore[misc]
            row.p_adjusted = adjusted
    return ([base] if base else []) + others


@dataclass
class Confirmation:
    """The confirmed comparison: the baseline, the recipes, the winner (best mean) and the verdict."""

    metric: str
    mode: str
    seeds: int
    epochs: int
    rows: list[Compared]
    seconds: float = 0.0
    trained: int = 0  # runs trained now (the rest: reused search trials, or an earlier session's)

    @property
    def baseline(self) -> Compared | None:
        return next((r for r in self.rows if r.name == BASELINE), None)

    @property
    def best_recipe(self) -> Compared | None:
        """The recipe with the best mean over the seeds (the baseline aside)."""
        sign = 1 if self.mode == "max" else -1
        recipes = [r for r in self.rows if r.name != BASELINE]
        return max(recipes, key=lambda r: sign * r.mean) if recipes else None

    @property
    def winner(self) -> Compared | None:
        """The best mean over the seeds: the best recipe, or the baseline when no recipe's mean beats it."""
        best = self.best_recipe
        return best if best is None or best.gain is None or best.gain > 0 else self.baseline

    @property
    def significant(self) -> bool:
        best = self.best_recipe
        return best is not None and best.significant

    @property
    def compared(self) -> int:
        return sum(1 for r in self.rows if r.p_adjusted is not None)

    def verdict(self) -> str:
        """The summary's last words: whether the winner is real, by how much, with its interval."""
        winner = self.best_recipe
        if winner is None or winner.gain is None:
            return "no recipe could be compared with the baseline over seeds"
        how = (f"{_signed(winner.gain)} ± {_half(winner)} {self.metric} ({LEVEL:.0%} interval over "
               f"{winner.pairs} paired seeds), {p_text(winner.p_adjusted or 1.0)} ({TEST_NAME}, Holm-corrected for "
               f"{self.compared} recipe{'s' * (self.compared != 1)})")
        if self.significant:
            return f"{winner.name}'s recipe beat the baseline beyond seed noise: {how}"
        lead = (f"the baseline kept the best mean; best recipe {winner.name}" if self.winner is self.baseline
                else f"best {winner.name}")
        return f"no recipe beat the baseline beyond seed noise: {lead}, {how}"

    def table(self) -> list[str]:
        """One line per recipe: mean ± interval, sd, and the paired gain over the baseline."""
        lines = [f"  {'':<12} {self.metric + ' mean ± 95%':<24} {'sd':>7}   {'vs baseline ± 95%':<22} p (Holm)"]
        for row in self.rows:
            mark = " ★" if row is self.winner else ""
            gain = f"{_signed(row.gain)} ± {_half(row)}" if row.gain is not None else "-"
            p = p_text(row.p_adjusted) if row.p_adjusted is not None else "-"
            lines.append(f"  {row.name + mark:<12} {row.mean:.4f} ± {(row.high - row.low) / 2:.4f}{'':<8} "
                         f"{row.sd:>7.4f}   {gain:<22} {p}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """What the recipe keeps as `provenance.confirmed`."""
        winner = self.best_recipe
        head: dict[str, Any] = {"significant": self.significant, "verdict": self.verdict(), "seeds": self.seeds,
                                "epochs": self.epochs, "test": f"{TEST_NAME}, Holm over {self.compared}",
                                "level": LEVEL, "alpha": ALPHA}
        if self.winner is not None:
            head["winner_trial"] = self.winner.trial
        if winner is not None:
            head.update(trial=winner.trial, mean=winner.mean, sd=winner.sd, gain=winner.gain,
                        gain_low=winner.gain_low, gain_high=winner.gain_high, p=winner.p,
                        p_adjusted=winner.p_adjusted)
        return {**head, "rows": [row.to_dict() for row in self.rows]}


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value if abs(value) >= 5e-5 else 0.0:+.4f}"  # no "-0.0000" for a difference of 1e-17


def _half(row: Compared) -> str:
    if row.gain_low is None or row.gain_high is None:
        return "-"
    return f"{(row.gain_high - row.gain_low) / 2:.4f}"


def confirm(result: SearchResult, scores: SeedScores, *, top: int) -> Confirmation | None:
    """Re-train the baseline and the top recipes over the seeds (what is missing only) and compare."""
    baseline = result.baseline
    chosen = candidates(result, top)
    if baseline is None or not chosen:
        return None
    recipes: dict[str, dict[str, Value]] = {BASELINE: baseline.values}
    trials: dict[str, int | None] = {BASELINE: baseline.number}
    for record in chosen:
        recipes[f"trial {record.number}"] = record.values
        trials[f"trial {record.number}"] = record.number
    for record in [baseline, *chosen]:
        scores.reuse(record.values, record)
    values = scores.scores(recipes)
    rows = compare(values, recipes, trials, result.info.mode)
    return Confirmation(result.info.metric, result.info.mode, scores.seeds, scores.epochs, rows,
                        trained=scores.trained)
