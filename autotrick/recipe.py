"""Recipes: the tricks that won, as versioned YAML that `autotrick train --recipe` and the Python
API re-apply to a user's own model and loop.

    autotrick_recipe: 1
    tricks:   {norm: {type: group, groups: 8}, optim: {name: sgd, lr: 0.08, ...}, ...}
    training: {model: cnn, data: digits, epochs: 15, batch_size: 64, seed: 0, precision: fp32,
               threads: 1}   # the trial's CPU threads: the same count re-trains it bit for bit
    provenance: {metric: val_accuracy, value: 0.986, baseline: 0.972, search: quick, trial: 7,
                 mlflow_run_id: ..., versions: {...}}

`autotrick.load_recipe` reads one from a file, from runs:/<run_id>/recipe.yaml or from models:/NAME@champion
(the MLflow references are resolved by autotrick.tracking, which imports this module, never the
other way round).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autotrick.atomic import write_text_atomically
from autotrick.errors import ConfigError
from autotrick.params import Value
from autotrick.records import SearchResult, TrialRecord

if TYPE_CHECKING:
    from torch import Tensor, nn

    from autotrick.apply import TrainingSetup

SCHEMA_VERSION = 1
RECIPE_FILE = "recipe.yaml"
_TRAINING_KEYS = ("model", "data", "epochs", "batch_size", "seed", "precision", "threads", "weights")


@dataclass
class Recipe:
    """The tricks that won a search, the training settings they won under, and where they came from.

    `tricks` is flat ({"norm.type": "group", "optim.lr": 0.08, ...}) and complete: every parameter
    of every registered trick, at the winner's value or the baseline's. Apply it to your own model
    with `apply`, or re-train it with `autotrick train --recipe FILE`.
    """

    tricks: dict[str, Value]                      # flat: {"norm.type": "group", ...}
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_search(cls, result: SearchResult, *, mlflow_run_id: str | None = None,
                    record: TrialRecord | None = None) -> Recipe | None:
        """The best trial (or `record`, a point of a multi-objective search's front) of a complete
        search as a recipe; None when the search has none to give (interrupted, or no trial succeeded)."""
        best = record or result.best
        if not result.complete or best is None:
            return None
        info, baseline = result.info, result.baseline
        provenance: dict[str, Any] = {
            "metric": info.metric, "value": best.metric, "baseline": baseline.metric if baseline else None,
            "search": info.name, "space": info.space, "trial": best.number, "versions": dict(info.versions),
            "mlflow_run_id": mlflow_run_id}
        if best.measurements:
            provenance["measured"] = dict(best.measurements)
        if info.objectives and (values := best.objective_values(info.objectives)) is not None:
            provenance["objectives"] = dict(zip(info.objectives, values, strict=True))
        training = {"model": info.model, "data": info.data, "epochs": info.max_epochs, "batch_size": info.batch_size,
                    "seed": info.seed, "precision": best.values.get("precision.dtype", "fp32"), "threads": info.threads}
        if info.weights:
            training["weights"] = info.weights  # the model started from these: a re-run must too
        return cls(tricks=dict(best.values), provenance=provenance, training=training)

    def to_yaml(self) -> str:
        nested: dict[str, dict[str, Value]] = {}
        for key, value in self.tricks.items():
            trick, _, param = key.partition(".")
            nested.setdefault(trick, {})[param] = value
        document = {"autotrick_recipe": SCHEMA_VERSION, "tricks": nested, "training": self.training,
                    "provenance": self.provenance}
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)  # ± in a verdict

    def write(self, path: str | Path) -> Path:
        """Write the YAML to `path` atomically: a kill leaves the old file or the new one."""
        return write_text_atomically(path, self.to_yaml())

    def apply(self, model: nn.Module, *, num_classes: int, steps_per_epoch: int, epochs: int | None = None,
              device: str = "cpu", seed: int | None = None, example: Tensor | None = None,
              teacher: nn.Module | None = None, class_counts: Tensor | None = None) -> TrainingSetup:
        """Apply the model-side tricks to `model` and build the optimizer, per-step schedule,
        loss, augmentation and pruning step for a training loop: returns an
        autotrick.apply.TrainingSetup (see examples/own_loop.py). `example`, a small batch of
        inputs as the loop holds them (uint8 images too), lets the model-side tricks see the model
        run once: where the classifier is, what each norm sees; then the model check looks at the
        result, as `autotrick train` does (a ModelCheckWarning, and `setup.model_check`).
        init.zero_last_norm and norm.type=instance need it; without it, one line says what the
        other tricks guess. `teacher` (for distill.teacher: default, the checkpoint file it names;
        autotrick.load_model(ref) reads an MLflow reference) and `class_counts` (for loss.alpha):
        see apply_tricks."""
        from autotrick.apply import apply_tricks

        reference = self.tricks.get("distill.teacher")
        if reference is not None and teacher is None:
            from autotrick.checkpoint import load_teacher

            teacher = load_teacher(str(reference), device=device)
        return apply_tricks(self.tricks, model, num_classes=num_classes, steps_per_epoch=steps_per_epoch,
                            epochs=epochs or int(self.training.get("epochs", 15)), device=device,
                            seed=self.training.get("seed", 0) if seed is None else seed, example=example,
                            teacher=teacher, class_counts=class_counts)


def parse_recipe(text: str, source: str) -> Recipe:
    """Validate a recipe document: schema version, tricks and values, training settings."""
    from autotrick.space import resolve_values

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {source}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict) or "autotrick_recipe" not in raw:
        raise ConfigError(f"recipe {source}: not an autotrick recipe (no 'autotrick_recipe: {SCHEMA_VERSION}' key)")
    version = raw["autotrick_recipe"]
    if type(version) is not int or version != SCHEMA_VERSION:  # YAML's `true` and 1.0 equal 1 too
        raise ConfigError(f"recipe {source}: schema version {version!r} is not supported; "
                          f"this autotrick reads version {SCHEMA_VERSION}")
    unknown = set(raw) - {"autotrick_recipe", "tricks", "training", "provenance"}
    if unknown:
        raise ConfigError(f"recipe {source}: unknown key '{sorted(unknown)[0]}'; allowed: autotrick_recipe, "
                          "tricks, training, provenance")
    tricks = raw.get("tricks") or {}
    if not isinstance(tricks, Mapping) or not all(isinstance(v, Mapping) for v in tricks.values()):
        raise ConfigError(f"recipe {source}: tricks must map each trick to its parameters")
    flat = {f"{trick}.{param}": value for trick, params in tricks.items() for param, value in params.items()}
    training = raw.get("training") or {}
    if not isinstance(training, Mapping):
        raise ConfigError(f"recipe {source}: training must be a mapping of {', '.join(_TRAINING_KEYS)}")
    for key, value in training.items():
        if key not in _TRAINING_KEYS:
            raise ConfigError(f"recipe {source}: training.{key} is unknown; allowed: {', '.join(_TRAINING_KEYS)}")
        _check_training(key, value, source)
    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, Mapping):
        raise ConfigError(f"recipe {source}: provenance must be a mapping (metric, value, baseline, ...), "
                          f"got {type(provenance).__name__}")
    return Recipe(tricks=resolve_values(flat, f"recipe {source}"), training=dict(training),
                  provenance=dict(provenance))


def _check_training(key: str, value: Any, source: str) -> None:
    """One training setting: what `autotrick train` would otherwise fail on with a traceback."""
    where = f"recipe {source}: training.{key}: {value!r}"
    positive = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if key in ("epochs", "batch_size", "threads") and not positive:
        raise ConfigError(f"{where} must be a positive integer")
    if key == "seed" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be an integer")
    if key == "weights" and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{where} must be a file, models:/NAME@alias or runs:/RUN_ID/model")
    if key in ("model", "data") and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{where} must be a name or spec, e.g. {'cnn' if key == 'model' else 'digits'}")
    if key == "precision":
        from autotrick.tricks import all_params

        choices = all_params()["precision.dtype"].choices
        if value not in choices:
            raise ConfigError(f"{where} is not allowed; expected one of {', '.join(map(str, choices))}")


def read_recipe_file(path: str | Path) -> Recipe:
    """A recipe from a YAML file (autotrick.load_recipe also takes runs:/ and models:/ references)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: no such file; expected a recipe .yaml, runs:/RUN_ID/{RECIPE_FILE} "
                          "or models:/NAME@champion")
    from autotrick.userfiles import read_user_text

    return parse_recipe(read_user_text(path, f"recipe {path}", "a recipe .yaml"), str(path))
