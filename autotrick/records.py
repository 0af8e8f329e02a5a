"""What a search produces, as plain data: shared by the trainer, the search (Ray), tracking (MLflow),
the CLI and recipes, so that none of them needs the others' libraries.

`Outcome` is the one vocabulary for how a trial ended (as `optuna.trial.TrialState` is Optuna's);
`TrialRecord` is one trial as every layer sees it; `SearchResult` is the whole search, handed as one
object from the search to the tracker, the summary and the recipe builder.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from autotrick.params import Value

if TYPE_CHECKING:
    import optuna


class Outcome(enum.StrEnum):
    """How a trial (or one training run) ended. A str enum: stored values stay readable words."""

    FINISHED = "finished"                  # trained every epoch of its budget
    PATIENCE_STOPPED = "patience_stopped"  # the early_stop trick ended the run: no gain for `patience` epochs
    ASHA_STOPPED = "asha_stopped"          # the search's ASHA scheduler stopped a poor trial at a rung
    DIVERGED = "diverged"                  # a non-finite training loss
    OOM = "oom"                            # out of memory
    FAILED = "failed"                      # raised, or its worker died
    INTERRUPTED = "interrupted"            # cut off by Ctrl-C, a signal, a kill or the time budget

    @classmethod
    def parse(cls, value: str) -> Outcome:
        """An outcome as stored; journals, tags and recipes written before the rename say
        "early_stopped" (patience) and "stopped_early" (ASHA)."""
        return cls(_RENAMED.get(value, value))

    @property
    def successful(self) -> bool:
        """The run trained to an end of its own: its metric counts towards the best."""
        return self in (Outcome.FINISHED, Outcome.PATIENCE_STOPPED)

    @property
    def failed(self) -> bool:
        """The run produced no usable metric because something went wrong in it."""
        return self in (Outcome.DIVERGED, Outcome.OOM, Outcome.FAILED)

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status that shows this outcome."""
        if self.failed:
            return "FAILED"
        return "KILLED" if self is Outcome.INTERRUPTED else "FINISHED"


_RENAMED = {"early_stopped": Outcome.PATIENCE_STOPPED.value, "stopped_early": Outcome.ASHA_STOPPED.value}


@dataclass
class TrialRecord:
    """One trial: the tricks it drew, how it ended, its curves and what it measured."""

    number: int                          # the Optuna trial number; 0 is the baseline
    values: dict[str, Value]             # every trick parameter drawn for the trial
    outcome: Outcome
    metric: float | None                 # the final value of the search metric (None if it failed)
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch ("system/..." too)
    reason: str = ""
    baseline: bool = False
    seconds: float = 0.0
    measurements: dict[str, float] = field(default_factory=dict)  # e.g. sparsity, nonzero_params
    error: str = ""                      # a failed trial's traceback, or Ray's report of its dead worker
    step_lrs: list[list[float]] = field(default_factory=list)  # [optimizer step, lr] pairs (thinned)

    def __post_init__(self) -> None:
        self.outcome = Outcome.parse(self.outcome)

    @property
    def successful(self) -> bool:
        return self.outcome.successful and self.metric is not None

    def metric_at(self, metric: str, epoch: int) -> float | None:
        """`metric` as the trial reported it at the end of `epoch`; None if it did not get there."""
        return next((row.get(metric) for row in self.history if row.get("epoch") == epoch), None)

    def objective_values(self, names: Sequence[str]) -> list[float] | None:
        """The trial's value of each objective (autotrick.objectives): measured on its trained model,
        or its last epoch's validation metric; None when one is missing."""
        last = self.history[-1] if self.history else {}
        epochs = {"train_seconds": sum(row.get("seconds", 0.0) for row in self.history)} if self.history else {}
        values = [self.measurements.get(name, last.get(name, epochs.get(name))) for name in names]
        return None if any(v is None for v in values) else [float(v) for v in values]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as the Optuna journal keeps it."""
        return {**asdict(self), "outcome": self.outcome.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        """A record as `to_dict` wrote it, in this or an earlier release (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


UNSETTLED_DEVICE = "auto"  # SearchInfo.device while auto GPUs on a cluster wait for the connection


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
    threads: int = 1                     # torch CPU threads per trial
    grace_epochs: int = 0                # ASHA's grace: every trial that did not fail trained this long
    versions: dict[str, str] = field(default_factory=dict)
    weights: str | None = None           # what the model started from (--weights), if not from scratch
    objectives: tuple[str, ...] = ()     # several: the search's Pareto front (the first is `metric`)
    skipped_images: int | None = None    # unreadable files --skip-bad-images left out (None: not asked)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k != "versions" and not (k == "skipped_images" and v is None)}


@dataclass
class SearchResult:
    """A whole search, earlier sessions of a resumed one included: what the search returns and
    what the tracker, the command's summary and `Recipe.from_search` take."""

    info: SearchInfo
    records: list[TrialRecord]
    interrupted: bool
    study: optuna.Study | None = None    # for Optuna's importance evaluator; None outside a search
    timings: dict[str, float] = field(default_factory=dict)
    confirmed: dict[str, Any] | None = None  # the confirmation over seeds (autotrick.confirm), when made
    stop_reason: str = ""  # why the search stopped before its trial budget, when it was not interrupted

    @property
    def best(self) -> TrialRecord | None:
        return best_of(self.records, self.info.mode)

    @property
    def baseline(self) -> TrialRecord | None:
        return next((r for r in self.records if r.baseline and r.successful), None)

    @property
    def gain(self) -> float | None:
        """best - baseline, signed so that > 0 means the tricks helped; None without both."""
        best, baseline = self.best, self.baseline
        if best is None or baseline is None or best.metric is None or baseline.metric is None:
            return None
        return (best.metric - baseline.metric) * (1 if self.info.mode == "max" else -1)

    @property
    def complete(self) -> bool:
        """Every requested trial ran and one succeeded: the search has a recipe to give."""
        return not self.interrupted and self.best is not None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.records if r.outcome is outcome)


def better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def best_of(records: list[TrialRecord], mode: str) -> TrialRecord | None:
    best: TrialRecord | None = None
    for record in records:
        if record.successful and better(record.metric, best.metric if best else None, mode):  # type: ignore[arg-type]
            best = record
    return best
