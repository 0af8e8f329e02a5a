"""The model, data and model files a command names, checked before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotrick.errors import ConfigError


def resolve_model_files(*, model: str | None, default_model: str, data: str, data_dir: str | None,
                        weights: str | None, teacher: Any, tracking_uri: str | None,
                        ) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
    """--weights and distill.teacher as absolute local files, since trials run in other folders:
    a file as given, an MLflow model fetched as a checkpoint. Each is loaded here once, so that one
    that does not fit the model or the data fails now, in one line. Returns the model spec (a
    checkpoint given as --weights names its own; `model`, if given, must agree), the weights file
    and the teacher's (reference, file)."""
    import torch

    from autotrick.checkpoint import build_initial_model, is_mlflow_ref, load_teacher, read_model_file
    from autotrick.data import describe_data
    from autotrick.state import FETCHED_MODELS

    images = describe_data(data, data_dir)  # the shape and classes, without loading a data set to stream
    shape = (images.in_channels, *images.image_size)

    def local_file(ref: str) -> str:
        if is_mlflow_ref(ref):
            from autotrick.tracking import fetch_checkpoint

            return str(fetch_checkpoint(ref, FETCHED_MODELS.resolve(), input_shape=shape, tracking_uri=tracking_uri))
        return str(Path(ref).expanduser().resolve())

    spec, weights_file = model or default_model, local_file(weights) if weights else None
    if weights_file is not None:
        named = read_model_file(weights_file, "--weights").spec
        if named is not None and model is not None and named != model:
            raise ConfigError(f"--weights {weights}: a checkpoint of model '{named}', not --model {model}")
        spec = named or spec
        build_initial_model(spec, weights=weights_file, num_classes=images.num_classes,
                            in_channels=images.in_channels, image_size=images.image_size)
    teachers: tuple[tuple[str, str], ...] = ()
    if teacher is not None:
        teachers = ((str(teacher), local_file(str(teacher))),)
        with torch.no_grad():
            outputs = load_teacher(str(teacher), dict(teachers))(torch.zeros(2, *shape)).shape[-1]
        if outputs != images.num_classes:
            raise ConfigError(f"distill.teacher {teacher}: the teacher gives {outputs} classes, the data set "
                              f"'{data}' has {images.num_classes}; expected a teacher trained on the same classes")
    return spec, weights_file, teachers


def check_model_and_data(model: str, data: str, data_dir: str | None, *, skip_bad_images: bool = False) -> Any:
    """Fail early, in the driver, on a model or data set that cannot be built or found; returns
    the data set's DataSize (told without decoding it where it may not fit in memory, except
    that `skip_bad_images` scans an image folder for its unreadable files)."""
    from autotrick.data import describe_data
    from autotrick.models import build_model

    size = describe_data(data, data_dir, skip_bad_images=skip_bad_images)
    build_model(model, num_classes=size.num_classes, in_channels=size.in_channels, image_size=size.image_size)
    return size
