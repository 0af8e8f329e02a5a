"""Whether a data set is held in memory or streamed: chosen by its decoded size against a memory
budget (`auto`), or as the user says (`--data-mode memory|stream`), and said in the output.

The budget is MEMORY_SHARE of the host's available memory, split between the trials that run at
once on it (each trial process holds its own copy); when the trials train on a GPU that this
process can see, also MEMORY_SHARE of each trial's share of that GPU's memory (in-memory data is
copied to the device). Half, not all: the model, its activations, the optimizer and the decoded
batches need the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from autotrick.data.sources import DataSize
from autotrick.errors import ConfigError

DATA_MODES = ("auto", "memory", "stream")
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class DataPlan:
    """How a data set reaches the trainer, and why."""

    mode: str  # "memory" or "stream"
    decoded_bytes: int
    budget_bytes: int
    chosen_by: str  # "auto" or "--data-mode"

    def describe(self) -> str:
        """e.g. `data in memory (1.1 MB decoded)`, `data streamed (150.2 GB decoded > 5.9 GB budget)`."""
        where = "in memory" if self.mode == "memory" else "streamed"
        size = _bytes(self.decoded_bytes)
        if self.chosen_by != "auto":
            return f"data {where} ({size} decoded; --data-mode {self.mode})"
        relation = "<=" if self.decoded_bytes <= self.budget_bytes else ">"
        return f"data {where} ({size} decoded {relation} {_bytes(self.budget_bytes)} budget)"


def check_data_mode(mode: str) -> str:
    if mode not in DATA_MODES:
        raise ConfigError(f"--data-mode {mode!r}: expected one of {', '.join(DATA_MODES)}")
    return mode


def memory_budget(*, device: str, trials_at_once: int = 1, gpu_share: float = 1.0) -> int:
    """Bytes of decoded data one trial may hold (see the module docstring)."""
    import psutil

    budget = MEMORY_SHARE * psutil.virtual_memory().available / max(1, trials_at_once)
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_properties(torch.device(device).index or 0).total_memory
            budget = min(budget, MEMORY_SHARE * gpu * min(1.0, gpu_share))
    return int(budget)


def plan_data(size: DataSize, mode: str, *, device: str, trials_at_once: int = 1, gpu_share: float = 1.0) -> DataPlan:
    """`memory` or `stream` for `size` under `mode` (auto, memory or stream)."""
    check_data_mode(mode)
    budget = memory_budget(device=device, trials_at_once=trials_at_once, gpu_share=gpu_share)
    if mode == "stream" and not size.streamable:
        raise ConfigError(f"--data-mode stream: data set '{size.name}' is only held in memory; image folders "
                          "(imagefolder:DIR) and your own datasets that tell their classes (.classes or .targets) "
                          "stream")
    if mode != "auto":
        return DataPlan(mode, size.decoded_bytes, budget, "--data-mode")
    stream = size.streamable and size.decoded_bytes > budget
    return DataPlan("stream" if stream else "memory", size.decoded_bytes, budget, "auto")


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"
