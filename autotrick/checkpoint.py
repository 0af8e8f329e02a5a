"""Model files: autotrick checkpoints (a trained model and what rebuilds it) and plain state dicts
(torchvision's weight files), for a distillation teacher and for fine-tuning from weights.

A checkpoint is a .pt file that torch.load reads with weights_only=True:

    {"autotrick_checkpoint": 1, "model": "cnn", "num_classes": 10, "input_shape": [1, 8, 8],
     "tricks": {"norm.type": "group", ...}, "state_dict": {...}}

`model` is a build_model spec and `tricks` the values it was trained with (a recipe's): the model
is built, given the structure those tricks gave it (apply.prepare_trained) and loaded. Any other
file that torch.load reads as a mapping of names to tensors is a plain state dict, for the model
that --model names. Nothing is ever downloaded: torchvision's weights come from a local file.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from autotrick.errors import ConfigError, first_line
from autotrick.params import Value

CHECKPOINT_KEY = "autotrick_checkpoint"
CHECKPOINT_VERSION = 1
MLFLOW_PREFIXES = ("models:/", "runs:/")


def is_mlflow_ref(ref: str) -> bool:
    return ref.startswith(MLFLOW_PREFIXES)


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: always weights; for a checkpoint, also what rebuilds the model."""

    state_dict: dict[str, Tensor]
    spec: str | None = None                      # None: a plain state dict
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    tricks: dict[str, Value] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, *, spec: str, tricks: Mapping[str, Value],
                    num_classes: int, input_shape: tuple[int, int, int]) -> Path:
    """Write `model`'s weights as an autotrick checkpoint (trained with `tricks`, for images of
    `input_shape` (C, H, W) and `num_classes` classes)."""
    import io

    from autotrick.atomic import write_bytes_atomically

    # Saved to memory, then written atomically: torch.save on a full disk raises a RuntimeError
    # ("iostream error") that names neither the file nor the cause, and leaves the file half-written.
    buffer = io.BytesIO()
    torch.save({CHECKPOINT_KEY: CHECKPOINT_VERSION, "model": spec, "num_classes": num_classes,
                "input_shape": list(input_shape), "tricks": dict(tricks),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buffer)
    return write_bytes_atomically(path, buffer.getvalue())


def read_model_file(path: str | Path, what: str) -> ModelFile:
    """The checkpoint or state dict at `path`; a one-line ConfigError naming `what` (the option
    or parameter that gave it) when it is missing or neither."""
    path = Path(path).expanduser()
    expected = "an autotrick checkpoint .pt or a state dict (e.g. torchvision's weights file)"
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file; expected {expected}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False, which would run them
        raise ConfigError(f"{what} {path}: refused: it holds Python objects other than tensors, which loading "
                          f"would run as code; expected {expected}") from None
    except Exception as error:
        raise ConfigError(f"{what} {path}: cannot be read ({first_line(error)}); expected {expected}") from None
    if isinstance(raw, Mapping) and CHECKPOINT_KEY in raw:
        if raw[CHECKPOINT_KEY] != CHECKPOINT_VERSION:
            raise ConfigError(f"{what} {path}: checkpoint version {raw[CHECKPOINT_KEY]!r} is not supported; "
                              f"this autotrick reads version {CHECKPOINT_VERSION}")
        return ModelFile(dict(raw["state_dict"]), raw["model"], int(raw["num_classes"]),
                         tuple(raw["input_shape"]), dict(raw.get("tricks") or {}))
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ConfigError(f"{what} {path}: holds {type(raw).__name__}, not model weights; expected {expected}")
    return ModelFile(dict(raw))


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> nn.Module:
    """The model an autotrick checkpoint holds, rebuilt and loaded, in eval mode."""
    from autotrick.apply import prepare_trained
    from autotrick.models import build_model

    file = read_model_file(path, what)
    if file.spec is None:
        raise ConfigError(f"{what} {path}: a plain state dict names no model; expected an autotrick checkpoint "
                          "(autotrick.checkpoint.save_checkpoint writes one)")
    assert file.num_classes is not None and file.input_shape is not None
    channels, height, width = file.input_shape
    model = build_model(file.spec, num_classes=file.num_classes, in_channels=channels, image_size=(height, width))
    model = prepare_trained(model, file.tricks, example_inputs=torch.zeros(2, *file.input_shape))
    try:
        model.load_state_dict(file.state_dict)
    except RuntimeError as error:
        raise ConfigError(f"{what} {path}: its weights do not fit model '{file.spec}' with its tricks "
                          f"({first_line(error)})") from None
    return model.eval()


def build_initial_model(spec: str, *, weights: str | None, num_classes: int, in_channels: int,
                        image_size: tuple[int, int]) -> nn.Module:
    """The model a run starts from: `spec` built fresh, or initialized from `weights` (a state dict
    for `spec`, or a checkpoint, which names its own model): a new head where the class count differs."""
    from autotrick.models import build_model
    from autotrick.tricks.finetune import load_pretrained, replace_head
    from autotrick.tricks.head import classifier

    if weights is None:
        return build_model(spec, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    file = read_model_file(weights, "--weights")
    example = torch.zeros(2, in_channels, *image_size)  # what the classifier finder traces
    if file.spec is not None:
        return replace_head(load_checkpoint(weights, "--weights").train(), num_classes, example)
    model = build_model(spec, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    load_pretrained(model, file.state_dict, head=classifier(model, example), source=weights)
    return model


def load_teacher(ref: str, files: Mapping[str, str] | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """The teacher `ref` names (distill.teacher), on `device`, in eval mode and frozen: a checkpoint file, or the
    local checkpoint `files` maps an MLflow reference to (the search and train commands fetch them
    before training). Loaded once per process and file version, and shared: nothing changes it."""
    from autotrick.tricks.distill import as_teacher

    path = (files or {}).get(ref)
    if path is None and is_mlflow_ref(ref):
        raise ConfigError(f"distill.teacher {ref}: an MLflow reference; pass teacher=autotrick.load_model({ref!r}) "
                          "(autotrick search and train fetch it themselves)")
    file = Path(path or ref).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"distill.teacher {ref}: no such file; expected models:/NAME@alias, runs:/RUN_ID/model "
                          "or an autotrick checkpoint .pt")
    return as_teacher(_cached_checkpoint(str(file), file.stat().st_mtime_ns), device)


@functools.lru_cache(maxsize=2)
def _cached_checkpoint(path: str, version: int) -> nn.Module:
    # Building the model draws from torch's generator, here on a process's first load only: off
    # the caller's seeded sequence, or the first trial in a worker would train on other numbers.
    with torch.random.fork_rng(devices=[]):
        return load_checkpoint(path, "distill.teacher")

