"""A trick's parameters, the domains a search space gives them, and how values are drawn.

Every trick declares its parameters once (`Param`), with its default search range and its
baseline value. A search space narrows or fixes those ranges (`Domain`). `suggest_values` walks
the registered tricks define-by-run: a conditional parameter is only drawn when its parent
choice is taken. The same walk over a `FixedTrial` re-applies a recipe, so ranges are
written in one place only, as Optuna's FixedTrial is meant to be used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from autotrick.errors import ConfigError

Value = bool | int | float | str | None
Kind = Literal["choice", "float", "int", "bool"]


@dataclass(frozen=True)
class When:
    """Sample a parameter only when a sibling parameter of the same trick has one of `values`,
    or is above `above` (for example the pruning finetune only when the ratio is > 0)."""

    param: str
    values: tuple[Value, ...] = ()
    above: float | None = None

    def holds(self, value: Value) -> bool:
        if self.above is not None:
            return value is not None and float(value) > self.above  # type: ignore[arg-type]
        return value in self.values

    def __str__(self) -> str:
        if self.above is not None:
            return f"{self.param} > {self.above:g}"
        return f"{self.param} in {{{', '.join(str(v) for v in self.values)}}}"


@dataclass(frozen=True)
class Param:
    """One parameter of a trick.

    `default` is the baseline: the trick off, or the model's own setting. `low`/`high` is the
    default search range; `bounds` what is allowed at all (defaults to the search range).
    `nullable` parameters take None for "off / leave the model's own value".
    """

    name: str
    kind: Kind
    default: Value
    help: str
    choices: tuple[Value, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    bounds: tuple[float, float] | None = None
    nullable: bool = False
    when: When | None = None

    @property
    def allowed_range(self) -> tuple[float, float]:
        assert self.low is not None and self.high is not None
        return self.bounds or (self.low, self.high)

    def describe_allowed(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        lo, hi = self.allowed_range
        kind = "an integer" if self.kind == "int" else "a number"
        null = " or null" if self.nullable else ""
        return f"{kind} in [{lo:g}, {hi:g}]{null}"

    def default_domain(self) -> Domain:
        if self.kind == "choice":
            return Choice(self.choices)
        if self.kind == "bool":
            return Choice((False, True))
        assert self.low is not None and self.high is not None
        return Range(self.low, self.high, log=self.log, integer=self.kind == "int")

    def check(self, value: Any, where: str) -> Value:
        """Return `value` coerced to this parameter's type, or raise a one-line ConfigError."""
        bad = ConfigError(f"{where}: {value!r} is not allowed; expected {self.describe_allowed()}")
        if value is None:
            if self.nullable or (self.kind == "choice" and None in self.choices):
                return None
            raise bad
        if self.kind == "choice":
            if value not in self.choices or isinstance(value, bool) != any(
                isinstance(c, bool) for c in self.choices if c == value
            ):
                raise bad
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if self.kind == "int" and not float(value).is_integer():
            raise bad
        lo, hi = self.allowed_range
        if not math.isfinite(value) or not lo <= value <= hi:
            raise bad
        return int(value) if self.kind == "int" else float(value)


class SuggestingTrial(Protocol):
    """The part of `optuna.Trial` that sampling uses; a `FixedTrial` also provides it."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value."""

    value: Value

    def suggest(self, trial: SuggestingTrial, key: str) -> Value:
        return self.value


@dataclass(frozen=True)
class Choice:
    """A parameter drawn from a list of options."""

    options: tuple[Value, ...]

    def suggest(self, trial: SuggestingTrial, key: str) -> Value:
        return trial.suggest_categorical(key, list(self.options))


@dataclass(frozen=True)
class Range:
    """A parameter drawn from [low, high], optionally on a log scale or in steps."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    step: float | None = None

    def suggest(self, trial: SuggestingTrial, key: str) -> Value:
        if self.integer:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)


Domain = Fixed | Choice | Range


class FixedTrial:
    """Answers every `suggest_*` with a value given up front, as `optuna.trial.FixedTrial` does.

    Used to re-apply a recipe or a `--set` through the same define-by-run walk that sampled it.
    The values were validated by `Param.check` before; a missing one is a bug of the caller.
    """

    def __init__(self, values: Mapping[str, Value]) -> None:
        self.values = dict(values)

    def _get(self, name: str) -> Any:
        return self.values[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._get(name)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._get(name)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._get(name)


@dataclass(frozen=True)
class Trick:
    """What the registry knows of a trick: its name, one line of help (with the formula where
    there is one), and its parameters, in the order they are drawn."""

    name: str
    summary: str
    params: tuple[Param, ...]

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def suggest_values(tricks: Iterable[Trick], domains: Mapping[str, Domain],
                  trial: SuggestingTrial) -> dict[str, Value]:
    """Draw every trick's parameters define-by-run; skip a conditional one whose parent says no.

    `domains` maps "trick.param" to its domain; a parameter it does not name sits at its default.
    """
    values: dict[str, Value] = {}
    for trick in tricks:
        for param in trick.params:
            if param.when is not None and not param.when.holds(values[f"{trick.name}.{param.when.param}"]):
                continue
            key = f"{trick.name}.{param.name}"
            values[key] = domains.get(key, Fixed(param.default)).suggest(trial, key)
    return values
