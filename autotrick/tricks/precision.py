"""Mixed precision: bf16 or fp16 autocast on CUDA (fp16 with a grad scaler); fp32 on the CPU."""

import contextlib
import functools
import warnings
from typing import Any

import torch

from autotrick.params import Param, Trick

PRECISION = Trick(
    name="precision",
    summary="autocast dtype on CUDA: fp32 | bf16 | fp16 (with a grad scaler); the CPU runs fp32",
    params=(Param("dtype", "choice", "fp32", "compute dtype", choices=("fp32", "bf16", "fp16")),),
)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _on_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def resolve_precision(dtype: str, device: torch.device | str) -> str:
    """The precision that will really run: `dtype` on CUDA, fp32 anywhere else (with a warning)."""
    if dtype == "fp32" or _on_cuda(device):
        return dtype
    _warn_fallback(dtype, torch.device(device).type)
    return "fp32"


@functools.cache  # once per process (and per dtype): every trial of a search would repeat it
def _warn_fallback(dtype: str, device_type: str) -> None:
    warnings.warn(f"precision {dtype} needs CUDA; running fp32 on the {device_type.upper()}",
                  RuntimeWarning, stacklevel=3)


def autocast(dtype: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast to bf16/fp16 on CUDA; a no-op for fp32 and off CUDA."""
    if dtype == "fp32" or not _on_cuda(device):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=_AUTOCAST_DTYPES[dtype])


def grad_scaler(dtype: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA: fp16's 5 exponent bits underflow small
    gradients unless the loss is scaled up; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler("cuda", enabled=dtype == "fp16" and _on_cuda(device))
