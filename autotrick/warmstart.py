"""Starting a search from what is known: named recipes (a space's `priors:`, `--warm-start` recipe
files, runs:/ and models:/ references) run right after the baseline with their exact values, and
an earlier search's finished trials are told to the new study, so that TPE starts from what it
learned (same space: every parameter; another space: the parameters they share, where the
earlier value lies in the new domain with the same distribution). Optuna's public API only
(enqueue_trial, add_trial, create_trial); no Ray here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autotrick.errors import ConfigError
from autotrick.params import Domain, Fixed, Value

WARM_KEY = "autotrick.warm_start"      # an enqueued trial's source (a prior's name, a recipe reference)
WARM_VALUES = "autotrick.warm_values"  # its exact values, as JSON
TOLD_FROM = "autotrick.told_from"      # a trial told from an earlier search


@dataclass(frozen=True)
class WarmStart:
    """What a search starts from: named recipes, and earlier searches' studies."""

    recipes: tuple[tuple[str, dict[str, Value]], ...] = ()
    searches: tuple[tuple[str, str], ...] = ()  # (search name, its state folder)


NO_WARM_START = WarmStart()


def resolve_warm_starts(refs: tuple[str, ...], *, tracking_uri: str | None, state_root: Path) -> WarmStart:
    """Each --warm-start: an earlier search's name (its folder under .autotrick holds a journal),
    else a recipe (a file, runs:/, models:/), checked now, before Ray or MLflow start."""
    from autotrick.state import JOURNAL_FILE
    from autotrick.tracking import load_recipe

    recipes, searches = [], []
    for ref in refs:
        folder = (state_root / ref).resolve()
        if "/" not in ref and (folder / JOURNAL_FILE).is_file():
            searches.append((ref, str(folder)))
            continue
        try:
            recipes.append((ref, dict(load_recipe(ref, tracking_uri=tracking_uri).tricks)))
        except ConfigError as error:
            raise ConfigError(f"--warm-start {ref}: not an earlier search's name here, nor a recipe ({error})") \
                from None
    return WarmStart(tuple(recipes), tuple(searches))


def warm_domains(space_domains: Mapping[str, Domain], values: Mapping[str, Value]) -> dict[str, Domain]:
    """The domains that make a trial draw `values` exactly: a value inside a searched domain is
    still suggested (enqueued, so Optuna learns from it); every other one is fixed."""
    domains: dict[str, Domain] = {key: Fixed(value) for key, value in values.items()}
    for key, domain in space_domains.items():
        if key in values and not isinstance(domain, Fixed) and domain.contains(values[key]):
            domains[key] = domain
    return domains


def enqueue_recipes(study: optuna.Study, space_domains: Mapping[str, Domain],
                    recipes: tuple[tuple[str, dict[str, Value]], ...]) -> None:
    """Each recipe as the next trials, in order (after the baseline, which is enqueued first)."""
    for label, values in recipes:
        searched = {key: value for key, value in values.items() if key in space_domains
                    and not isinstance(space_domains[key], Fixed) and space_domains[key].contains(value)}
        study.enqueue_trial(searched, user_attrs={WARM_KEY: label, WARM_VALUES: json.dumps(values)},
                            skip_if_exists=False)


def warm_values(trial: optuna.Trial) -> dict[str, Value] | None:
    text = trial.user_attrs.get(WARM_VALUES)
    return json.loads(text) if text else None


class _Recorder:
    """A trial that records the distribution a domain asks for, and answers with a given value."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.distribution: optuna.distributions.BaseDistribution | None = None

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.distribution = optuna.distributions.CategoricalDistribution(list(choices))
        return self.value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        self.distribution = optuna.distributions.FloatDistribution(low, high, step=step, log=log)
        return self.value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.distribution = optuna.distributions.IntDistribution(low, high, step=step, log=log)
        return self.value


def tell_earlier(study: optuna.Study, space_domains: Mapping[str, Domain], searches: tuple[tuple[str, str], ...],
                 *, open_storage: Callable[[Path], optuna.storages.BaseStorage]) -> int:
    """Add each earlier search's complete trials to `study` with the parameters both spaces search
    alike (each search's study opened by `open_storage` on its folder); returns how many were told."""
    told = 0
    for name, folder in searches:
        earlier = optuna.load_study(study_name=name, storage=open_storage(Path(folder)))
        if earlier.direction != study.direction:
            continue
        for trial in earlier.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            params: dict[str, Any] = {}
            distributions: dict[str, optuna.distributions.BaseDistribution] = {}
            for key, value in trial.params.items():
                domain = space_domains.get(key)
                if domain is None or isinstance(domain, Fixed) or not domain.contains(value):
                    continue
                recorder = _Recorder(value)
                domain.suggest(recorder, key)
                if recorder.distribution is not None and recorder.distribution == trial.distributions.get(key):
                    params[key], distributions[key] = value, recorder.distribution
            if params:
                study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                          value=trial.value, user_attrs={TOLD_FROM: name}))
                told += 1
    return told
