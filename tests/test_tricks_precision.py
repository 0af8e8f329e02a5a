"""Mixed precision (tricks/precision.py): the CPU falls back to fp32 and says so once; autocast on CUDA."""

import warnings

import pytest
import torch

from autotrick.tricks import precision


def test_half_precision_on_the_cpu_runs_fp32_and_warns_once() -> None:
    precision._warn_fallback.cache_clear()  # another test may have warned already in this process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so that "once" is ours, not the warnings registry's
        assert [precision.resolve_precision("bf16", "cpu") for _ in range(3)] == ["fp32"] * 3
        assert precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert [str(w.message) for w in caught] == ["precision bf16 needs CUDA; running fp32 on the CPU"]


def test_autocast_and_scaler_are_off_on_the_cpu() -> None:
    with precision.autocast("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not precision.grad_scaler("fp16", "cpu").is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_and_scaler_on_cuda() -> None:
    a = torch.ones(2, 2, device="cuda")
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with precision.autocast(dtype, "cuda"):
            assert (a @ a).dtype == torch_dtype
    assert precision.grad_scaler("fp16", "cuda").is_enabled()
    assert not precision.grad_scaler("bf16", "cuda").is_enabled()
