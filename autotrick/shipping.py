"""The user's code and files, taken to trials on nodes that do not share the driver's disk.

Files that a trial opens by path (a `path/file.py:function` model or data set, --weights, a
distillation teacher's checkpoint) are read once by the driver and travel with the trainable's
parameters (Ray's object store, once per search); a trial on any node writes them to a folder of
its own and opens them there (`localized`). A `module:function` of the driver's folder goes as one
of Ray's runtime-environment py_modules (`driver_modules`). Data sets are not copied: the same
path must be on every node (autotrick.search._nodes checks it before trials start). Imports no Ray."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from autotrick.entrypoints import is_callable_spec
from autotrick.trainer import TrainConfig


def _spec_file(spec: str) -> str | None:
    target, _, _ = spec.rpartition(":")
    return target if is_callable_spec(spec) and target.endswith(".py") else None


def files_to_ship(train: TrainConfig) -> dict[str, bytes]:
    """Every file of the driver's disk that a trial opens: its bytes by its absolute path."""
    paths = [_spec_file(train.model), _spec_file(train.data), train.weights, *(path for _, path in train.teachers)]
    return {path: Path(path).read_bytes() for path in paths if path}


def localized(train: TrainConfig, files: Mapping[str, bytes]) -> TrainConfig:
    """`train` with each shipped file replaced by a copy on this node (written once per node and
    content: the folder is named by its digest, the file keeps its name)."""
    if not files:
        return train
    here = {path: str(_materialize(path, data)) for path, data in files.items()}

    def spec(value: str) -> str:
        file = _spec_file(value)
        return value if file is None or file not in here else f"{here[file]}:{value.rpartition(':')[2]}"

    return replace(train, model=spec(train.model), data=spec(train.data),
                   weights=here.get(train.weights, train.weights) if train.weights else None,
                   teachers=tuple((ref, here.get(path, path)) for ref, path in train.teachers))


def _materialize(path: str, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "autotrick-shipped" / digest / Path(path).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{os.getpid()}")
        part.write_bytes(data)
        os.replace(part, target)  # several trials of a node may write it at once
    return target


def cluster_runtime_env(train: TrainConfig) -> dict[str, list[str]]:
    """Ray's runtime environment for the trials' code: the driver folder's modules they import."""
    modules = driver_modules(train.model, train.data)
    return {"py_modules": modules} if modules else {}


def driver_modules(*specs: str) -> list[str]:
    """The modules of the driver's working folder that `module:function` specs name (the file or
    the package folder), for Ray's py_modules; installed modules are the nodes' own business."""
    folder = Path.cwd().resolve()
    found: list[str] = []
    for value in specs:
        if not is_callable_spec(value) or _spec_file(value) or value.startswith("imagefolder:"):
            continue
        top = value.rpartition(":")[0].split(".")[0]
        if top in sys.modules and not getattr(sys.modules[top], "__file__", None):
            continue
        added = str(folder) not in sys.path
        if added:
            sys.path.insert(0, str(folder))
        try:
            module = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            module = None
        finally:
            if added:
                sys.path.remove(str(folder))
        origin = Path(module.origin).resolve() if module is not None and module.origin else None
        if origin is None or not origin.is_relative_to(folder):
            continue
        path = origin.parent if origin.name == "__init__.py" else origin
        if str(path) not in found:
            found.append(str(path))
    return found
