"""What a search produces, as plain data: shared by search.py (Ray), tracking.py (MLflow),
the CLI and recipes, so none of them needs the others' libraries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotrick.params import Value

# How a trial ended. "stopped_early" is ASHA stopping a poor trial (not weight pruning).
TRIAL_OUTCOMES = ("finished", "early_stopped", "stopped_early", "diverged", "oom", "failed")
SUCCESSFUL = ("finished", "early_stopped")


@dataclass
class TrialRecord:
    number: int                          # the Optuna trial number; 0 is the baseline
    values: dict[str, Value]             # every trick parameter drawn for the trial
    outcome: str
    metric: float | None                 # the final value of the search metric (None if it failed)
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    reason: str = ""
    baseline: bool = False
    seconds: float = 0.0

    @property
    def successful(self) -> bool:
        return self.outcome in SUCCESSFUL and self.metric is not None


@dataclass
class SearchInfo:
    """The search as the parent MLflow run and the recipe's provenance describe it."""

    name: str
    space: str
    model: str
    data: str
    metric: str
    mode: str
    trials: int
    max_epochs: int
    batch_size: int
    seed: int
    device: str
    versions: dict[str, str] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "versions"}


def better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def best_of(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    best: TrialRecord | None = None
    for record in records:
        if record.successful and better(record.metric, best.metric if best else None, mode):  # type: ignore[arg-type]
            best = record
    return best
