"""INT8: ONNX Runtime's static quantization of an ONNX file, calibrated on training images.

quantize_static with the QDQ format (QuantizeLinear/DequantizeLinear pairs around each op, which
ONNX Runtime fuses into integer kernels), signed 8-bit weights per output channel, and
activations' ranges from MinMax calibration (the min and max each activation takes over the
calibration images; ONNX Runtime's default method) on CALIBRATION_IMAGES images drawn from the
training split. q = clamp(round(x / scale) + zero_point), one scale per weight channel.

Activations are unsigned (U8S8), not the S8S8 that ONNX Runtime's guide names first: measured
here (onnxruntime 1.32, a VNNI Xeon, CIFAR ResNet-18), S8S8 left 12 of the 20 convolutions as
float Conv between Dequantize/Quantize (slower than FP32), U8S8 fused all 20 into QLinearConv
(benchmarks/README.md). U8S8's known risk is saturation: x86 CPUs without VNNI multiply u8 by s8
with VPMADDUBSW, whose 16-bit intermediate sums can saturate; VNNI's VPDPBUSD accumulates in
32 bits and cannot. So on x86 without VNNI weights are quantized to 7 bits (`reduce_range`, the
remedy ONNX Runtime documents), and on CPUs with VNNI (avx512_vnni, avx_vnni, amx) or on other
architectures (ARM's dot products do not saturate) they keep all 8.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotrick.atomic import file_written_atomically
from autotrick.deploy._onnx import INPUT

CALIBRATION_IMAGES = 512
CALIBRATION_METHOD = "MinMax"
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


@dataclass(frozen=True)
class QuantSettings:
    """How the model is quantized, and why (one line for the report)."""

    activations: str  # "uint8"
    weights: str  # "int8", per output channel
    reduce_range: bool  # 7-bit weights
    reason: str


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's text (x86's `flags` lines, ARM's `Features`)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def quant_settings(machine: str, flags: frozenset[str]) -> QuantSettings:
    """The settings for a CPU: `machine` as platform.machine() says it, `flags` its feature flags."""
    if machine.lower() not in X86:
        return QuantSettings("uint8", "int8", False, f"{machine}: no u8 x s8 saturation, full 8-bit weights")
    vnni = sorted(VNNI_FLAGS & flags)
    if vnni:
        return QuantSettings("uint8", "int8", False, f"x86 with VNNI ({', '.join(vnni)}): full 8-bit weights")
    return QuantSettings("uint8", "int8", True, "x86 without VNNI: 7-bit weights (reduce_range) so that "
                         "VPMADDUBSW's 16-bit sums cannot saturate")


def this_cpu() -> QuantSettings:
    """quant_settings for the CPU this runs on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read; x86 then takes the safe 7-bit weights
        text = ""
    return quant_settings(platform.machine(), cpu_flags(text))


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: Iterable[np.ndarray],
                  settings: QuantSettings) -> Path:
    """Quantize the ONNX file at `fp32_path` to `int8_path`; `calibration`: float32 batches, the
    normalized inputs the model takes."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT: batch}

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with tempfile.TemporaryDirectory() as tmp:
        # ONNX Runtime's pre-processing: shapes inferred and the graph optimized, which its
        # quantizer needs to place the QDQ pairs where they fuse.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        with file_written_atomically(int8_path) as temporary:  # a full disk leaves no half-written model
            quantize_static(str(prepared), str(temporary), _Batches(), quant_format=QuantFormat.QDQ,
                            activation_type=types[settings.activations], weight_type=types[settings.weights],
                            per_channel=True, reduce_range=settings.reduce_range,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD))
    return Path(int8_path)
