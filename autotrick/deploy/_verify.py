"""What a deployable model is measured by: its outputs against PyTorch's, its accuracy on the
validation split, its size and its latency.

Latency is the median of repeated runs after warm-up (WARMUP runs, then at least MIN_REPEATS and
up to MAX_REPEATS, stopping after REPEAT_SECONDS), at batch 1 and at batch 64, on the CPU:
PyTorch eager in inference mode, ONNX Runtime on its CPU execution provider, each with every core
its default gives it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

LATENCY_BATCHES = (1, 64)
WARMUP, MIN_REPEATS, MAX_REPEATS, REPEAT_SECONDS = 3, 5, 50, 2.0
# np.allclose's test, |onnx - torch| <= ATOL + RTOL * |torch| for every logit: float32 summed in
# another order (and batch norm folded into the convolutions) differs in the last bits, not more.
ATOL, RTOL = 1e-3, 1e-3
MAX_ACCURACY_GAP = 0.002  # FP32 ONNX's validation accuracy within this of PyTorch's

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class FormatReport:
    """One form of the model (pytorch, onnx, int8) as measured."""

    name: str
    size_mb: float
    accuracy: float
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch -> median ms
    max_abs_diff: float | None = None  # against PyTorch's logits (None: PyTorch itself)

    def measurements(self) -> dict[str, float]:
        """Flat numbers for a record, a recipe and MLflow: onnx_size_mb, onnx_latency_ms_b64, ..."""
        found = {f"{self.name}_size_mb": self.size_mb, f"{self.name}_accuracy": self.accuracy}
        found.update({f"{self.name}_latency_ms_b{batch}": ms for batch, ms in self.latency_ms.items()})
        if self.max_abs_diff is not None:
            found[f"{self.name}_max_abs_diff"] = self.max_abs_diff
        return found

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def predictions(predict: Predict, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, float]:
    """The logits `predict` gives for every batch, and its accuracy against the labels."""
    logits, labels = [], []
    for x, y in batches:
        logits.append(predict(x))
        labels.append(y)
    out, truth = np.concatenate(logits), np.concatenate(labels)
    return out, float((out.argmax(1) == truth).mean())


def outputs_match(logits: np.ndarray, reference: np.ndarray) -> bool:
    return bool(np.allclose(logits, reference, atol=ATOL, rtol=RTOL))


def latency_ms(predict: Predict, x: np.ndarray) -> float:
    """Median milliseconds of `predict(x)` after WARMUP runs."""
    for _ in range(WARMUP):
        predict(x)
    times: list[float] = []
    deadline = time.perf_counter() + REPEAT_SECONDS
    while len(times) < MIN_REPEATS or (len(times) < MAX_REPEATS and time.perf_counter() < deadline):
        started = time.perf_counter()
        predict(x)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def latencies(predict: Predict, sample: np.ndarray) -> dict[int, float]:
    """latency_ms at each of LATENCY_BATCHES, the batch made by repeating `sample`'s images."""
    found = {}
    for batch in LATENCY_BATCHES:
        x = np.ascontiguousarray(np.resize(sample, (batch, *sample.shape[1:])))
        found[batch] = latency_ms(predict, x)
    return found
