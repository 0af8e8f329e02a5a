"""Search spaces: a YAML file says which tricks are searched over which ranges, which are fixed,
and the training budget. Everything is validated here, before Ray, Optuna or MLflow start.

    description: one line for `autotrick spaces`
    model: cnn                 # defaults for --model / --data
    data: digits
    budget: {trials: 20, max_epochs: 15, grace_epochs: 3, metric: val_accuracy}
    train: {batch_size: 64}
    tricks:
      norm: {type: [keep, batch, group], groups: [4, 8]}   # a list: choices
      optim: {name: sgd, lr: {low: 0.01, high: 0.3, log: true}}   # a scalar: fixed; a mapping: range
      smoothing: search        # every parameter of the trick over its default range

A parameter not named stays at its default (the baseline), so a trick not listed is off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from autotrick.errors import ConfigError
from autotrick.params import (
    Choice,
    Domain,
    Fixed,
    FixedTrial,
    Param,
    Range,
    SuggestingTrial,
    Value,
    suggest_values,
)
from autotrick.tricks import BY_NAME, TRICKS, all_params

METRICS = {"val_accuracy": "max", "val_loss": "min"}
SEARCH_ALL = "search"
_TOP_KEYS = ("description", "model", "data", "budget", "train", "tricks", "priors")


@dataclass(frozen=True)
class Budget:
    trials: int = 20
    max_epochs: int = 15
    grace_epochs: int = 3  # ASHA: no trial is stopped before this many epochs
    metric: str = "val_accuracy"

    @property
    def mode(self) -> str:
        return METRICS[self.metric]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str
    description: str = ""
    model: str = "cnn"
    data: str = "digits"
    budget: Budget = field(default_factory=Budget)
    batch_size: int = 64
    domains: Mapping[str, Domain] = field(default_factory=dict)
    # named recipes from the literature, tried right after the baseline: (name, complete values)
    priors: tuple[tuple[str, dict[str, Value]], ...] = ()

    @property
    def label(self) -> str:
        """How to name the space to a person: its built-in name, else its path (relative to the
        working folder when it lies below it)."""
        path = Path(self.source)
        if builtin_spaces().get(self.name) == path:
            return self.name
        return str(path.resolve().relative_to(Path.cwd())) if path.resolve().is_relative_to(Path.cwd()) else str(path)

    def suggest(self, trial: SuggestingTrial) -> dict[str, Value]:
        """Draw one trial's trick values define-by-run."""
        return suggest_values(TRICKS, self.domains, trial)

    def baseline_domains(self, baseline: Mapping[str, Value]) -> dict[str, Domain]:
        """The domains that make the search's first trial the baseline: a baseline value inside a
        searched domain is still suggested (so Optuna learns from it), one outside it is fixed."""
        return {key: Fixed(baseline[key]) if key in baseline and not domain.contains(baseline[key]) else domain
                for key, domain in self.domains.items()}

    def with_budget(self, **changes: Any) -> SearchSpace:
        return replace(self, budget=replace(self.budget, **{k: v for k, v in changes.items() if v is not None}))


def resolve_values(given: Mapping[str, Any], where: str) -> dict[str, Value]:
    """Validate user-given values ({"norm.type": "group", ...}) and walk them define-by-run, as a
    recipe is re-applied: unknown keys and bad values fail here; a conditional parameter whose
    parent is not chosen is dropped; a parameter not given sits at its default."""
    params = all_params()
    checked: dict[str, Value] = {}
    for key, value in given.items():
        if key not in params:
            trick = key.split(".")[0]
            allowed = (", ".join(f"{trick}.{p.name}" for p in BY_NAME[trick].params) if trick in BY_NAME
                       else "a trick.param of " + ", ".join(BY_NAME))
            raise ConfigError(f"{where}: unknown trick parameter '{key}'; expected {allowed}")
        checked[key] = params[key].check(value, f"{where}: {key}")
    values = {key: checked.get(key, p.default) for key, p in params.items()}
    # a free-text parameter is never searched (its search domain is its default): replay it as given
    domains = {key: Fixed(values[key]) if p.kind == "str" else p.search for key, p in params.items()}
    return suggest_values(TRICKS, domains, FixedTrial(values))


# --------------------------------------------------------------------------- loading

def builtin_spaces() -> dict[str, Path]:
    """The spaces shipped in search_spaces/, beside the package (autotrick installs editable)."""
    folder = Path(__file__).resolve().parent.parent / "search_spaces"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_space_path(name_or_path: str) -> Path:
    builtins = builtin_spaces()
    if name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"search space {name_or_path}: no such file")
        return path
    raise ConfigError(f"unknown search space '{name_or_path}'; expected one of "
                      f"{', '.join(builtins)} or a path to a .yaml file")


def load_space(name_or_path: str) -> SearchSpace:
    path = resolve_space_path(name_or_path)
    return space_from_text(read_space_text(path), path)


def read_space_text(path: Path) -> str:
    from autotrick.userfiles import read_user_text

    return read_user_text(path, str(path), "a search space, a YAML file (see search_spaces/)")


def space_from_text(text: str, path: Path) -> SearchSpace:
    """The space a YAML text describes, named after `path` (a resumed search keeps its space's
    text, so an edited or deleted file does not change it)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_space(raw, name=path.stem, source=str(path))


def parse_space(raw: Any, *, name: str, source: str) -> SearchSpace:
    def fail(key: str, rule: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {rule}")

    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise fail("top level", "must be a mapping of " + ", ".join(_TOP_KEYS))
    _no_unknown_keys(raw, _TOP_KEYS, "top level", fail)
    for key in ("description", "model", "data"):
        if key in raw and not isinstance(raw[key], str):
            raise fail(key, "must be a string")
    space = SearchSpace(
        name=name, source=source, description=raw.get("description", ""),
        model=raw.get("model", "cnn"), data=raw.get("data", "digits"),
        budget=_parse_budget(raw.get("budget") or {}, fail),
        batch_size=_parse_train(raw.get("train") or {}, fail),
        domains=_parse_tricks(raw.get("tricks") or {}, fail),
        priors=_parse_priors(raw.get("priors") or {}, source, fail),
    )
    if all(isinstance(domain, Fixed) for domain in space.domains.values()):
        # Every trial would train the baseline's tricks or one fixed set: nothing to compare.
        raise fail("tricks", "the space searches nothing: give at least one trick a list of choices, a range or "
                   f"'{SEARCH_ALL}', e.g. `tricks: {{smoothing: {SEARCH_ALL}}}` (`autotrick tricks` lists them)")
    return space


def _parse_priors(raw: Any, source: str, fail: Any) -> tuple[tuple[str, dict[str, Value]], ...]:
    """`priors: {name: {trick: {param: value}}}`: each a recipe, checked as a recipe's tricks are."""
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise fail("priors", "must map each prior's name to its tricks, e.g. `priors: {bag_of_tricks: "
                   "{schedule: {name: cosine}}}`")
    priors = []
    for name, tricks in raw.items():
        if not all(isinstance(v, Mapping) for v in tricks.values()):
            raise fail(f"priors.{name}", "must map each trick to its parameters")
        flat = {f"{trick}.{param}": value for trick, params in tricks.items() for param, value in params.items()}
        priors.append((str(name), resolve_values(flat, f"{source}: priors.{name}")))
    return tuple(priors)


def _no_unknown_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], where: str, fail: Any) -> None:
    if not isinstance(raw, Mapping):
        raise fail(where, "must be a mapping of " + ", ".join(allowed))
    for key in raw:
        if key not in allowed:
            raise fail(f"{where}.{key}" if where != "top level" else str(key),
                       f"unknown key; allowed: {', '.join(allowed)}")


def _positive_int(value: Any, key: str, fail: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(key, f"{value!r} must be a positive integer")
    return value


def _parse_budget(raw: Mapping[str, Any], fail: Any) -> Budget:
    _no_unknown_keys(raw, ("trials", "max_epochs", "grace_epochs", "metric"), "budget", fail)
    values = {k: _positive_int(v, f"budget.{k}", fail) for k, v in raw.items() if k != "metric"}
    if "metric" in raw and raw["metric"] not in METRICS:
        raise fail("budget.metric", f"{raw['metric']!r} is not allowed; expected one of {', '.join(METRICS)}")
    given: dict[str, Any] = {**values, **({"metric": raw["metric"]} if "metric" in raw else {})}
    budget = Budget(**given)
    if budget.grace_epochs > budget.max_epochs:
        raise fail("budget.grace_epochs", f"{budget.grace_epochs} must be <= max_epochs ({budget.max_epochs})")
    return budget


def _parse_train(raw: Mapping[str, Any], fail: Any) -> int:
    _no_unknown_keys(raw, ("batch_size",), "train", fail)
    return _positive_int(raw.get("batch_size", 64), "train.batch_size", fail)


def _parse_tricks(raw: Mapping[str, Any], fail: Any) -> dict[str, Domain]:
    _no_unknown_keys(raw, tuple(BY_NAME), "tricks", fail)
    domains: dict[str, Domain] = {}
    for trick_name, spec in raw.items():
        trick = BY_NAME[trick_name]
        if spec == SEARCH_ALL:
            domains.update({trick.key(p.name): p.search for p in trick.params})
            continue
        if not isinstance(spec, Mapping):
            raise fail(f"tricks.{trick_name}", f"must be '{SEARCH_ALL}' or a mapping of its parameters: "
                       + ", ".join(p.name for p in trick.params))
        _no_unknown_keys(spec, tuple(p.name for p in trick.params), f"tricks.{trick_name}", fail)
        for param_name, param_spec in spec.items():
            key = f"{trick_name}.{param_name}"
            domains[key] = parse_domain(trick.param(param_name), param_spec, f"tricks.{key}", fail)  # type: ignore[arg-type]
    return domains


def parse_domain(param: Param, spec: Any, key: str, fail: Any) -> Domain:
    """A scalar fixes the parameter, a list gives its choices, a mapping {low, high, log, step} its range."""
    def check(value: Any) -> Value:
        try:
            return param.check(value, key)
        except ConfigError as exc:
            raise fail(key, str(exc).removeprefix(f"{key}: ")) from None

    if isinstance(spec, list) and param.kind == "str":
        raise fail(key, f"{param.name} is free text, given and not searched: give one value, not a list")
    if isinstance(spec, list):
        if not spec:
            raise fail(key, f"empty choice list; give at least one of {param.describe_allowed()}")
        return Choice(tuple(check(v) for v in spec))
    if not isinstance(spec, Mapping):
        return Fixed(check(spec))
    if not isinstance(param.allowed, Range):
        raise fail(key, f"a range needs a numeric parameter; {param.name} takes {param.describe_allowed()}")
    _no_unknown_keys(spec, ("low", "high", "log", "step"), key, fail)
    if "low" not in spec or "high" not in spec:
        raise fail(key, "a range needs both low and high")
    low, high = check(spec["low"]), check(spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{key}.log", f"{log!r} must be true or false")
    step = spec.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)):
        raise fail(f"{key}.step", f"{step!r} must be a positive number")
    try:
        return Range(float(low), float(high), log=log, integer=param.allowed.integer, step=step)  # type: ignore[arg-type]
    except ValueError as exc:  # the range checks itself: low <= high, log needs low > 0, ...
        raise fail(key, str(exc)) from None


def describe_space(space: SearchSpace) -> str:
    """One line: what the space searches."""
    searched = sorted({key.split(".")[0] for key, d in space.domains.items() if not isinstance(d, Fixed)})
    return (f"{space.description or '(no description)'} [{space.model} on {space.data}, "
            f"{space.budget.trials} trials x {space.budget.max_epochs} epochs; searches {', '.join(searched)}]")
