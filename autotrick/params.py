"""A trick's parameters, the domains a search space gives them, and how values are drawn.

Every trick declares its parameters once (`Param`), with its default search range and its
baseline value. A search space narrows or fixes those ranges (`Domain`). `suggest_values` walks
the registered tricks define-by-run: a conditional parameter is only drawn when its parent
choice is taken. The same walk over a `FixedTrial` re-applies a recipe, so ranges are
written in one place only, as Optuna's FixedTrial is meant to be used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from autotrick.errors import ConfigError

Value = bool | int | float | str | None
Kind = Literal["choice", "float", "int", "bool", "str"]


@dataclass(frozen=True)
class When:
    """Sample a parameter only when a sibling parameter of the same trick has one of `values`,
    is above `above` (for example the pruning finetune only when the ratio is > 0), or, with
    `is_set`, is not null (the distillation temperature only when there is a teacher)."""

    param: str
    values: tuple[Value, ...] = ()
    above: float | None = None
    is_set: bool = False

    def holds(self, value: Value) -> bool:
        if self.is_set:
            return value is not None
        if self.above is not None:
            return value is not None and float(value) > self.above
        return value in self.values

    def __str__(self) -> str:
        if self.is_set:
            return f"{self.param} is set"
        if self.above is not None:
            return f"{self.param} > {self.above:g}"
        return f"{self.param} in {{{', '.join(value_text(v) for v in self.values)}}}"


@dataclass(frozen=True)
class Param:
    """One parameter of a trick.

    `default` is the baseline: the trick off, or the model's own setting. `low`/`high` is the
    default search range; `bounds` what is allowed at all (defaults to the search range).
    `nullable` parameters take None for "off / leave the model's own value".
    A "str" parameter is free text (a reference such as a teacher model's): it is given, never
    searched, so its search domain is its default and a space can only fix it.
    The kind is read once, here, to build the two domains that answer every other question.
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

    @functools.cached_property
    def search(self) -> Domain:
        """The default search domain: what `tricks: {name: search}` draws from."""
        if self.kind == "str":
            return Fixed(self.default)
        if self.kind != "choice" and self.kind != "bool":
            assert self.low is not None and self.high is not None
            return Range(self.low, self.high, log=self.log, integer=self.kind == "int")
        allowed = self.allowed
        assert not isinstance(allowed, Text)  # a str parameter's is its Fixed default, above
        return allowed

    @functools.cached_property
    def allowed(self) -> Domain | Text:
        """Every value a search space, a recipe or --set may give (null aside)."""
        if self.kind == "choice":
            return Choice(self.choices)
        if self.kind == "bool":
            return Choice((False, True))
        if self.kind == "str":
            return Text()
        assert self.low is not None and self.high is not None
        low, high = self.bounds or (self.low, self.high)
        return Range(low, high, integer=self.kind == "int")

    def accepts_null(self) -> bool:
        return self.nullable or self.allowed.contains(None)

    def describe_allowed(self) -> str:
        return self.allowed.describe() + (" or null" if self.nullable else "")

    def check(self, value: Any, where: str) -> Value:
        """Return `value` as this parameter's type, or raise a one-line ConfigError."""
        if value is None and self.accepts_null():
            return None
        if value is None or not self.allowed.contains(value):
            raise ConfigError(f"{where}: {value!r} is not allowed; expected {self.describe_allowed()}")
        return self.allowed.coerce(value)

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

    def contains(self, value: Value) -> bool:
        return _same(value, self.value)

    def coerce(self, value: Value) -> Value:
        return value

    def describe(self) -> str:
        return f"exactly {self.value!r}"

    def __str__(self) -> str:
        return value_text(self.value)


@dataclass(frozen=True)
class Choice:
    """A parameter drawn from a list of options."""

    options: tuple[Value, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError("empty choice list")

    def suggest(self, trial: SuggestingTrial, key: str) -> Value:
        return trial.suggest_categorical(key, list(self.options))

    def contains(self, value: Value) -> bool:
        return any(_same(value, option) for option in self.options)

    def coerce(self, value: Value) -> Value:
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(value_text(o) for o in self.options)

    def __str__(self) -> str:
        return "{" + ", ".join(value_text(o) for o in self.options) + "}"


@dataclass(frozen=True)
class Range:
    """A parameter drawn from [low, high], optionally on a log scale or in steps. Checked when
    made, as Optuna's distributions are: a bad range never reaches a sampler."""

    low: float
    high: float
    log: bool = False
    integer: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) > high ({self.high:g}); a range needs low <= high")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low:g})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step {self.step:g} must be a positive number")
        if self.step is not None and self.log:
            raise ValueError("a range cannot have both a step and log: true")
        if self.integer and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            step = "" if self.step is None else f", step {self.step:g}"
            raise ValueError(f"an integer parameter takes whole numbers (got low {self.low:g}, high {self.high:g}"
                             f"{step})")

    def suggest(self, trial: SuggestingTrial, key: str) -> Value:
        if self.integer:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return self.low <= value <= self.high and (not self.integer or float(value).is_integer())

    def coerce(self, value: Value) -> Value:
        return int(value) if self.integer else float(value)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{'an integer' if self.integer else 'a number'} in [{self.low:g}, {self.high:g}]"

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Text:
    """Any non-empty string: what a free-text parameter allows. It is never sampled (a space can
    only fix it), so it has no `suggest`; what the text refers to is checked where it is used."""

    def contains(self, value: Value) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def coerce(self, value: Value) -> Value:
        return value

    def describe(self) -> str:
        return "a non-empty string"


Domain = Fixed | Choice | Range


def _same(value: Value, option: Value) -> bool:
    """Equal and of the same kind: YAML's `true` is not the option 1, nor 1 the option true."""
    return value == option and isinstance(value, bool) == isinstance(option, bool)


def value_text(value: Value) -> str:
    """A value as YAML writes it: null, true/false, numbers and names as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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

    def key(self, param: str) -> str:
        """The parameter's key in a flat set of values: "norm" + "groups" -> "norm.groups"."""
        return f"{self.name}.{param}"

    def kwargs(self, values: Mapping[str, Value]) -> dict[str, Any]:
        """This trick's values, as keyword arguments of its function: {"norm.type": "group",
        "optim.lr": 0.1} -> {"type": "group"} for the norm trick. A parameter that `values` does
        not hold (a conditional one whose parent is off) is left out: the function's default holds.
        Typed Any: each value has passed its Param's domain (kind, range, choices), which is what
        the function's annotation asks; a type checker cannot follow that through the key."""
        return {p.name: values[self.key(p.name)] for p in self.params if self.key(p.name) in values}

    def defaults(self) -> dict[str, Value]:
        """The baseline: every parameter at its default, conditional ones included."""
        return {self.key(p.name): p.default for p in self.params}


def suggest_values(tricks: Iterable[Trick], domains: Mapping[str, Domain],
                  trial: SuggestingTrial) -> dict[str, Value]:
    """Draw every trick's parameters define-by-run; skip a conditional one whose parent says no.

    `domains` maps "trick.param" to its domain; a parameter it does not name sits at its default.
    """
    values: dict[str, Value] = {}
    for trick in tricks:
        for param in trick.params:
            # a parent that was not drawn itself (its own parent said no) says no as well
            if param.when is not None and (trick.key(param.when.param) not in values
                                           or not param.when.holds(values[trick.key(param.when.param)])):
                continue
            key = trick.key(param.name)
            values[key] = domains.get(key, Fixed(param.default)).suggest(trial, key)
    return values
