"""The trials' system metrics, sampled in this process as a trial's worker samples them."""

from __future__ import annotations

import time

import pytest
import torch

from autotrick.system_metrics import SystemSampler


def test_each_sample_is_the_cpu_and_memory_since_the_last_under_mlflows_names() -> None:
    sampler = SystemSampler()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # keep a core busy: the window's CPU is above zero
        sum(range(1000))
    first = sampler.sample()
    assert set(first) == {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                          "system/system_memory_usage_percentage"}
    assert 0 < first["system/cpu_utilization_percentage"] <= 100
    assert first["system/system_memory_usage_megabytes"] > 0
    sampler.close()


def test_without_nvml_a_gpu_index_adds_no_gpu_figures_and_no_error() -> None:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        sampler = SystemSampler(gpu_index=0)
        assert not any("gpu" in key for key in sampler.sample())
        sampler.close()
    else:
        pytest.skip("nvidia-ml-py is installed here")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (and nvidia-ml-py)")
def test_on_a_gpu_its_utilization_is_sampled_while_it_works() -> None:
    pytest.importorskip("pynvml")
    sampler = SystemSampler(gpu_index=0)
    x = torch.randn(4096, 4096, device="cuda")
    deadline = time.perf_counter() + 3
    while time.perf_counter() < deadline:
        x = x @ x
        x = x / x.norm()
    torch.cuda.synchronize()
    sample = sampler.sample()
    sampler.close()
    assert sample["system/gpu_0_utilization_percentage"] > 0
    assert sample["system/gpu_0_memory_usage_megabytes"] > 0
