"""Which device a run trains on, how many trials a machine holds at once, and moving small host
tensors to a device without stalling it."""

from __future__ import annotations

import torch
from torch import Tensor

from autotrick.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cuda` must exist; `cpu` as is."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name!r}: expected one of {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
        raise ConfigError(f"--device {name}: no CUDA device is visible (torch {torch.__version__}, {build}); "
                          "use --device cpu or auto")
    return name


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device`. To a GPU through pinned memory, asynchronously: a plain copy
    from pageable memory waits for the GPU's queue to drain (a host sync) every time."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def trials_at_once(cpus: float, gpus: float, *, cpus_per_trial: float, gpus_per_trial: float | None) -> int:
    """How many trials run side by side: the CPUs' slots, and the GPUs' when trials take GPUs."""
    slots = int(cpus // max(cpus_per_trial, 1e-9))
    if gpus_per_trial:
        slots = min(slots, int(gpus // gpus_per_trial))
    return max(1, slots)
