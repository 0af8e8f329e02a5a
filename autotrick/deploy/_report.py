"""The export itself: a trained model to FP32 ONNX and, on request, INT8 ONNX, each verified in
ONNX Runtime on the validation split against the PyTorch model, and measured (deploy_model).

The FP32 file is verified: its logits match PyTorch's within _verify.ATOL/RTOL and its accuracy
is within _verify.MAX_ACCURACY_GAP of PyTorch's. INT8 is a trade: its accuracy drop, size and
latency are reported against FP32 ONNX and PyTorch eager, and the caller decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autotrick.augment import normalize
from autotrick.data import Feed
from autotrick.deploy._int8 import CALIBRATION_IMAGES, CALIBRATION_METHOD, QuantSettings, quantize_int8, this_cpu
from autotrick.deploy._onnx import INPUT, export_onnx, onnx_session
from autotrick.deploy._verify import (
    ATOL,
    MAX_ACCURACY_GAP,
    RTOL,
    FormatReport,
    latencies,
    outputs_match,
    predictions,
)

CALIBRATION_BATCH = 64


@dataclass
class DeployReport:
    """What the export produced and measured: one FormatReport per form of the model."""

    formats: list[FormatReport]
    onnx_path: str
    int8_path: str | None = None
    quant: QuantSettings | None = None
    calibration_images: int = 0
    validation_images: int = 0
    qat: bool = False  # the model was trained with quant.qat (fake quantization)
    notes: list[str] = field(default_factory=list)
    outputs_match: bool = False  # ONNX's logits within ATOL + RTOL of PyTorch's

    def get(self, name: str) -> FormatReport | None:
        return next((f for f in self.formats if f.name == name), None)

    @property
    def verified(self) -> bool:
        """FP32 ONNX computes what PyTorch computes: logits within tolerance, accuracy within the gap."""
        torch_, onnx = self.get("pytorch"), self.get("onnx")
        return (torch_ is not None and onnx is not None and onnx.max_abs_diff is not None
                and self.outputs_match and abs(onnx.accuracy - torch_.accuracy) <= MAX_ACCURACY_GAP)

    @property
    def int8_accuracy_drop(self) -> float | None:
        torch_, int8 = self.get("pytorch"), self.get("int8")
        return None if torch_ is None or int8 is None else torch_.accuracy - int8.accuracy

    def measurements(self) -> dict[str, float]:
        """Every number, flat: pytorch_/onnx_/int8_ size_mb, accuracy, latency_ms_b1/_b64, max_abs_diff."""
        found: dict[str, float] = {}
        for f in self.formats:
            found.update(f.measurements())
        if self.int8_accuracy_drop is not None:
            found["int8_accuracy_drop"] = self.int8_accuracy_drop
        return found

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (the export report artifact, the recipe's provenance)."""
        return {"verified": self.verified, "outputs_match": self.outputs_match,
                "tolerance": {"atol": ATOL, "rtol": RTOL, "max_accuracy_gap": MAX_ACCURACY_GAP},
                "validation_images": self.validation_images, "onnx_path": self.onnx_path,
                "int8_path": self.int8_path, "qat": self.qat,
                "int8": None if self.quant is None else {
                    "format": "QDQ", "activations": self.quant.activations,
                    "weights": f"{self.quant.weights} per channel",
                    "reduce_range": self.quant.reduce_range, "why": self.quant.reason,
                    "calibration": f"{CALIBRATION_METHOD} on {self.calibration_images} training images"},
                "formats": [f.to_dict() for f in self.formats], "notes": self.notes}

    def lines(self) -> list[str]:
        """The report as a terminal table, with a line on how it was made."""
        base = self.get("pytorch")
        rows = [f"{'model':<8} {'size MB':>9} {'accuracy':>9} {'ms @1':>8} {'ms @64':>8} {'img/s @64':>10} "
                f"{'speed vs pytorch @64':>21}"]
        for f in self.formats:
            b64 = f.latency_ms.get(64, float("nan"))
            ratio = base.latency_ms.get(64, float("nan")) / b64 if base else float("nan")
            rows.append(f"{f.name:<8} {f.size_mb:>9.3f} {f.accuracy:>9.4f} {f.latency_ms.get(1, float('nan')):>8.3f} "
                        f"{b64:>8.2f} {64_000 / b64:>10,.0f} {ratio:>20.2f}x")
        onnx = self.get("onnx")
        if onnx is not None and onnx.max_abs_diff is not None:
            rows.append(f"onnx vs pytorch on {self.validation_images} validation images: max |logit diff| "
                        f"{onnx.max_abs_diff:.2e} ({'within' if self.outputs_match else 'NOT within'} atol {ATOL:g} + "
                        f"rtol {RTOL:g}), accuracy gap {onnx.accuracy - base.accuracy:+.4f} "  # type: ignore[union-attr]
                        f"(allowed ±{MAX_ACCURACY_GAP}): {'verified' if self.verified else 'NOT verified'}")
        if self.quant is not None and self.int8_accuracy_drop is not None:
            rows.append(f"int8: QDQ, {self.quant.activations} activations, {self.quant.weights} weights per channel, "
                        f"{CALIBRATION_METHOD} calibration on {self.calibration_images} training images; "
                        f"{self.quant.reason}; accuracy drop {self.int8_accuracy_drop:+.4f}"
                        + (" (trained with quant.qat)" if self.qat else " (post-training quantization)"))
        return rows + self.notes


def deploy_model(model: nn.Module, feed: Feed, onnx_path: str | Path, *, int8: bool = False, qat: bool = False,
                 calibration_images: int = CALIBRATION_IMAGES, seed: int = 0,
                 quant: QuantSettings | None = None) -> DeployReport:
    """Export `model` to `onnx_path` (and, with `int8`, to NAME.int8.onnx beside it), verify and
    measure each against the PyTorch model on `feed`'s validation split (a CPU feed)."""
    onnx_path = Path(onnx_path)
    model = model.eval().cpu()
    val = [(normalize(x, feed.mean, feed.std).cpu().numpy(), y.cpu().numpy()) for x, y in feed.val_batches()]
    sample = val[0][0]
    export_onnx(model, torch.from_numpy(sample[:2]), onnx_path)

    def torch_predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    reference, accuracy = predictions(torch_predict, val)
    report = DeployReport([FormatReport("pytorch", _state_mb(model), accuracy, latencies(torch_predict, sample))],
                          onnx_path=str(onnx_path), validation_images=len(reference), qat=qat)
    logits, onnx = _onnx_format("onnx", onnx_path, val, sample, reference)
    report.formats.append(onnx)
    report.outputs_match = outputs_match(logits, reference)
    if int8:
        report.quant = quant or this_cpu()
        int8_path = onnx_path.with_suffix(".int8.onnx")
        batches = _calibration(feed, calibration_images, seed)
        report.calibration_images = sum(len(b) for b in batches)
        quantize_int8(onnx_path, int8_path, batches, report.quant)
        report.int8_path = str(int8_path)
        report.formats.append(_onnx_format("int8", int8_path, val, sample, reference)[1])
    return report


def _onnx_format(name: str, path: Path, val: list[tuple[np.ndarray, np.ndarray]], sample: np.ndarray,
                 reference: np.ndarray) -> tuple[np.ndarray, FormatReport]:
    session = onnx_session(path)

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT: x})[0]

    logits, accuracy = predictions(predict, val)
    diff = float(np.abs(logits - reference).max())
    return logits, FormatReport(name, path.stat().st_size / 1e6, accuracy, latencies(predict, sample), diff)


def _calibration(feed: Feed, count: int, seed: int) -> list[np.ndarray]:
    """`count` training images (fewer if the split is smaller), drawn at random with `seed`, normalized
    as the model sees them, in batches of CALIBRATION_BATCH."""
    order = torch.randperm(feed.size.train_count, generator=torch.Generator().manual_seed(seed))[:count]
    return [normalize(x, feed.mean, feed.std).cpu().numpy() for x, _ in feed.train_batches(order, CALIBRATION_BATCH)]


def _state_mb(model: nn.Module) -> float:
    """The model's parameters and buffers in megabytes (10^6 bytes), as PyTorch holds them."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
