"""Recipes trained over seeds, for confirmation and ablation: which (values, seed) runs a set of
recipes needs, which of them are already done, and their scores per seed.

Seed s of every recipe is the same seed (the search's seed + s: data order and initialization),
so recipes compare pair by pair. Every finished run is kept in `seeded-runs.json` beside the
search's Optuna journal, rewritten atomically after each run, so an interrupted confirmation or
ablation re-runs only what is missing; confirmation and ablation share it (the baseline's and the
winner's seeds are trained once). The runs themselves go through autotrick.search (Ray).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrick.atomic import write_text_atomically
from autotrick.params import Value
from autotrick.records import TrialRecord

RUNS_FILE = "seeded-runs.json"
_FORMAT = "autotrick_seeded_runs"


def run_key(values: Mapping[str, Value], seed: int, epochs: int) -> str:
    """One run's identity: its values (order-free), its seed and its epochs."""
    text = json.dumps([sorted(values.items(), key=lambda kv: kv[0]), seed, epochs], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class RunJournal:
    """The seeded runs finished so far: key -> {metric, outcome, seed, epochs}."""

    path: Path
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, state_dir: Path) -> RunJournal:
        path = state_dir / RUNS_FILE
        runs: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                document = json.loads(path.read_text())
                runs = dict(document.get("runs", {})) if document.get(_FORMAT) == 1 else {}
            except (ValueError, AttributeError):  # never torn (atomic writes); unreadable: start over
                runs = {}
        return cls(path, runs)

    def add(self, key: str, entry: dict[str, Any]) -> None:
        self.runs[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path, json.dumps({_FORMAT: 1, "runs": self.runs}, indent=1, sort_keys=True))


def seed_value(entry: Mapping[str, Any] | None, mode: str) -> float | None:
    """A seed's score: its metric, a finite one even when the run diverged (a diverged model is
    measured like any other: that is the loss it brings); a run with no metric (it raised, or its
    loss is not finite) counts as the worst accuracy, 0, or, for a loss, as missing."""
    if entry is None:
        return None
    metric = entry.get("metric")
    if isinstance(metric, int | float) and math.isfinite(metric):
        return float(metric)
    return 0.0 if mode == "max" else None


RunBatch = Callable[[list[tuple[dict[str, Value], int]], Callable[[dict[str, Value], int, TrialRecord], None]], None]


@dataclass
class SeedScores:
    """Trains recipes over seeds through `run_batch` (autotrick.search.run_seeded, bound to the
    search's options) and returns their scores per seed; what the journal holds is not re-run."""

    journal: RunJournal
    run_batch: RunBatch
    seeds: int
    base_seed: int
    epochs: int
    mode: str
    on_run: Callable[[dict[str, Value], int, TrialRecord], None] | None = None
    trained: int = 0  # runs trained by this session (not read back from the journal)

    def seed_of(self, index: int) -> int:
        return self.base_seed + index

    def reuse(self, values: Mapping[str, Value], record: TrialRecord) -> None:
        """A search trial that trained its full budget with the search's seed is seed 0 of its recipe."""
        key = run_key(values, self.seed_of(0), self.epochs)
        if key not in self.journal.runs and record.successful and record.epochs >= self.epochs:
            self.journal.add(key, {"metric": record.metric, "outcome": record.outcome.value,
                                   "seed": self.seed_of(0), "from_trial": record.number})

    def missing(self, recipes: Mapping[str, Mapping[str, Value]]) -> list[tuple[dict[str, Value], int]]:
        wanted: dict[str, tuple[dict[str, Value], int]] = {}
        for values in recipes.values():
            for index in range(self.seeds):
                key = run_key(values, self.seed_of(index), self.epochs)
                if key not in self.journal.runs:
                    wanted.setdefault(key, (dict(values), self.seed_of(index)))
        return list(wanted.values())

    def scores(self, recipes: Mapping[str, Mapping[str, Value]]) -> dict[str, list[float | None]]:
        """Each recipe's score for seed 0..S-1 (None: that run did not finish), training what is missing."""
        missing = self.missing(recipes)
        if missing:
            self.run_batch(missing, self._finished)
        return {name: [seed_value(self.journal.runs.get(run_key(values, self.seed_of(i), self.epochs)), self.mode)
                       for i in range(self.seeds)] for name, values in recipes.items()}

    def complete(self, recipes: Mapping[str, Mapping[str, Value]]) -> bool:
        return not self.missing(recipes)

    def _finished(self, values: dict[str, Value], seed: int, record: TrialRecord) -> None:
        self.trained += 1
        self.journal.add(run_key(values, seed, self.epochs),
                         {"metric": record.metric, "outcome": record.outcome.value, "seed": seed,
                          "reason": record.reason[:300]})
        if self.on_run is not None:
            self.on_run(values, seed, record)


def paired(a: list[float | None], b: list[float | None]) -> tuple[list[float], list[float]]:
    """The seeds where both recipes have a score."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]
