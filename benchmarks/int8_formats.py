"""Why `autotrick export --int8` quantizes activations to uint8 (U8S8) and not int8 (S8S8): for the
CIFAR ResNet-18 exported to ONNX, how many of its convolutions ONNX Runtime fuses into integer
kernels (QLinearConv) under each format, and the latency at batch 64 of FP32, S8S8 and U8S8.

    python benchmarks/int8_formats.py [--rounds 6]

Speed and fusion do not depend on training: the model is freshly built, its batch norms given
statistics of their own; calibration on 256 random normal images. The three sessions are timed
in turns (`--rounds`, after 2 warm-up runs each) and the median of each is reported, so that a
change of the machine's load falls on all three alike. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from autotrick.deploy import INPUT, QuantSettings, export_onnx, quantize_int8
from autotrick.models import cifar_resnet18


def fused_ops(path: Path, folder: Path) -> dict[str, int]:
    """The node types of the graph ONNX Runtime runs after its optimizations."""
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return {op: counts[op] for op in ("Conv", "QLinearConv", "QLinearAdd", "DequantizeLinear", "QuantizeLinear")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = cifar_resnet18(10, 3).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((64, 3, 32, 32), dtype=np.float32) for _ in range(4)]
    x = rng.standard_normal((64, 3, 32, 32), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {"fp32": export_onnx(model, torch.from_numpy(x[:2]), folder / "fp32.onnx")}
        for name, activations in (("s8s8", "int8"), ("u8s8", "uint8")):
            settings = QuantSettings(activations, "int8", False, name)
            paths[name] = quantize_int8(paths["fp32"], folder / f"{name}.onnx", iter(calibration), settings)
        ops = {name: fused_ops(path, folder) for name, path in paths.items()}
        sessions = {name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in paths.items()}
        for session in sessions.values():
            for _ in range(2):
                session.run(None, {INPUT: x})
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, {INPUT: x})
                times[name].append((time.perf_counter() - started) * 1000)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
                    "load_average": os.getloadavg()},
        "fused_ops": ops, "latency_ms_b64": {k: round(v, 1) for k, v in median.items()},
        "throughput_vs_fp32": {k: round(median["fp32"] / v, 2) for k, v in median.items()},
        "rounds_ms": {k: [round(v, 1) for v in values] for k, values in times.items()}}, indent=2))


if __name__ == "__main__":
    main()
