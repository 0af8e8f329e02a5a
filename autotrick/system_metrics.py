"""What the machine did while a trial trained: CPU, memory and, on a GPU, its utilization, sampled
in the trial's own worker and reported with each epoch under MLflow's system-metric names
(`system/cpu_utilization_percentage`, ...), so that the UI's "System metrics" tab shows them.

Why not `mlflow.enable_system_metrics_logging`: its monitor belongs to a run that is active while
the work happens, and a trial's MLflow run is written afterwards, by the driver (the writer thread),
from the trial's record; on a cluster only the trial's worker sees the node it runs on. So the
worker samples, and the samples travel with the epoch's report. Why not a sampling thread on the
CPU: psutil's `cpu_percent()` is the average since its previous call, so one call per epoch gives
the epoch's mean at no cost. GPU utilization (NVML, via nvidia-ml-py when installed) is an
instantaneous figure, so a daemon thread reads it once a second and the epoch gets the mean;
without a GPU or without NVML, no thread runs and no GPU figure is reported.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psutil

PREFIX = "system/"  # MLflow's own prefix for system metrics
_GPU_INTERVAL_S = 1.0


class SystemSampler:
    """Per-epoch system metrics of this process's machine (and its GPU `gpu_index`, if any)."""

    def __init__(self, gpu_index: int | None = None) -> None:
        psutil.cpu_percent()  # starts the window: the next call averages from here
        self._gpu = _GpuSampler(gpu_index) if gpu_index is not None else None

    def sample(self) -> dict[str, float]:
        """The epoch's figures: CPU averaged since the previous call, memory now, GPU averaged."""
        memory = psutil.virtual_memory()
        found = {"cpu_utilization_percentage": psutil.cpu_percent(),
                 "system_memory_usage_megabytes": memory.used / 1e6,
                 "system_memory_usage_percentage": memory.percent}
        if self._gpu is not None:
            found.update(self._gpu.sample())
        return {PREFIX + key: float(value) for key, value in found.items()}

    def close(self) -> None:
        if self._gpu is not None:
            self._gpu.close()


class _GpuSampler:
    """One GPU's utilization, read by a daemon thread every second and averaged per epoch."""

    def __init__(self, index: int) -> None:
        self._index, self._readings = index, [0.0, 0]  # utilization sum, count
        self._lock, self._stop = threading.Lock(), threading.Event()
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # no NVML library, no driver, no such device: no GPU figures
            self._nvml = None
            return
        threading.Thread(target=self._run, name="autotrick-gpu-sampler", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(_GPU_INTERVAL_S):
            with contextlib.suppress(Exception):
                utilization = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
                with self._lock:
                    self._readings[0] += utilization
                    self._readings[1] += 1

    def sample(self) -> dict[str, float]:
        if self._nvml is None:
            return {}
        with self._lock:
            total, count = self._readings
            self._readings = [0.0, 0]
        i = self._index
        found: dict[str, float] = {}
        with contextlib.suppress(Exception):
            if not count:  # an epoch shorter than the interval: one reading now
                total, count = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu), 1
            found[f"gpu_{i}_utilization_percentage"] = total / count
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            found[f"gpu_{i}_memory_usage_megabytes"] = memory.used / 1e6
            found[f"gpu_{i}_memory_usage_percentage"] = 100.0 * memory.used / memory.total
        return found

    def close(self) -> None:
        self._stop.set()
