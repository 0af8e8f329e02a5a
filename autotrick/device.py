"""Which device a run trains on, how many trials a machine holds at once, and moving small host
tensors to a device without stalling it."""

from __future__ import annotations

import math

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

def gpus_per_trial(value: float | str | None, *, address: str | None) -> float | None:
    """--gpus-per-trial as a number. auto (or not given): 1 when this machine has a GPU (what a local
    Ray will have), else 0; None on a cluster (--address), whose GPUs the search counts once it is
    connected. A local Ray's GPUs are this machine's: more than it has is refused now, not after
    Ray and MLflow start."""
    if address and (value is None or value == "auto"):
        return None
    here = torch.cuda.device_count()
    if value is None or value == "auto":
        return 1.0 if here > 0 else 0.0
    try:
        gpus = float(value)
    except (TypeError, ValueError):
        gpus = -1.0
    if not 0 <= gpus < math.inf:  # also NaN
        raise ConfigError(f"--gpus-per-trial {value}: expected auto or a number >= 0 (0.25: 4 trials per GPU)")
    if not address and gpus > here:
        raise ConfigError(f"--gpus-per-trial {value}: this machine has {here} GPU{'s' * (here != 1)}, which a local "
                          "Ray gets; give at most that, or --address a Ray cluster with GPUs")
    return gpus
