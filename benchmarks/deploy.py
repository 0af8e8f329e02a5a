"""The deployable model on this CPU: latency at batch 1 and 64, size and accuracy of PyTorch eager,
FP32 ONNX and INT8 ONNX (autotrick.deploy.deploy_model, what `autotrick export --onnx --int8`
runs), for the digits cnn and the CIFAR ResNet-18; and the wall time of a two-objective search
beside the one-objective search over the same space.

    python benchmarks/deploy.py [--resnet-data synthetic:cifar10:5000] [--resnet-epochs 3] [--searches 2]
                                [--out benchmarks/deploy-latest.json]

Each model is trained first, so that accuracy means something: the cnn 15 epochs on digits, the
ResNet-18 a few epochs on `synthetic:cifar10:N` (learnable generated data of CIFAR's shape: CIFAR
itself takes too long to train on 2 cores), with quant.qat off and, for the cnn, once more with the
last 2 epochs quantization-aware (QAT against post-training quantization). Latency: the median of
repeated runs after warm-up (autotrick.deploy._verify). The searches run the CLI in subprocesses,
`--space deploy --trials T --max-epochs E`, one-objective and two-objective (val_accuracy,latency_ms)
alternately, `--searches` times each; the median wall time of each is reported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from autotrick.data import open_feed
from autotrick.deploy import deploy_model, this_cpu
from autotrick.trainer import TrainConfig, run_trial


def trained(model: str, data: str, epochs: int, values: dict[str, object]) -> tuple[torch.nn.Module, float, float]:
    kept: list[torch.nn.Module] = []
    started = time.perf_counter()
    result = run_trial(values, TrainConfig(model=model, data=data, epochs=epochs, batch_size=128),  # type: ignore[arg-type]
                       on_trained=kept.append)
    return kept[0], result.val_accuracy, time.perf_counter() - started


def deploy_figures(name: str, model_spec: str, data: str, epochs: int, values: dict[str, object],
                   folder: Path) -> dict[str, object]:
    model, accuracy, seconds = trained(model_spec, data, epochs, values)
    feed = open_feed(data, None, device=torch.device("cpu"))
    report = deploy_model(model, feed, folder / f"{name}.onnx", int8=True, qat=bool(values.get("quant.qat")))
    forms = {f.name: f for f in report.formats}
    b64 = {k: f.latency_ms[64] for k, f in forms.items()}
    return {"model": name, "data": data, "epochs": epochs, "tricks": values, "train_seconds": round(seconds, 1),
            "val_accuracy_trained": accuracy, "verified": report.verified,
            "formats": {k: {"size_mb": round(f.size_mb, 4), "accuracy": f.accuracy,
                            "latency_ms_b1": round(f.latency_ms[1], 4), "latency_ms_b64": round(f.latency_ms[64], 3),
                            "images_per_s_b64": round(64_000 / f.latency_ms[64]),
                            "max_abs_diff": f.max_abs_diff} for k, f in forms.items()},
            "int8_accuracy_drop": report.int8_accuracy_drop,
            "int8_throughput_vs_onnx_b64": round(b64["onnx"] / b64["int8"], 2),
            "int8_throughput_vs_pytorch_b64": round(b64["pytorch"] / b64["int8"], 2),
            "onnx_throughput_vs_pytorch_b64": round(b64["pytorch"] / b64["onnx"], 2),
            "int8_size_vs_onnx": round(forms["int8"].size_mb / forms["onnx"].size_mb, 3)}


def search_seconds(objectives: str | None, trials: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "autotrick", "search", "--space", "deploy", "--trials", str(trials),
                   "--max-epochs", str(epochs), "--num-cpus", "2", "--name", "bench",
                   "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        if objectives:
            command += ["--objectives", objectives]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:] or done.stdout[-2000:])
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet-data", default="synthetic:cifar10:5000")
    parser.add_argument("--resnet-epochs", type=int, default=3)
    parser.add_argument("--searches", type=int, default=2, help="runs of each search (0: none)")
    parser.add_argument("--search-trials", type=int, default=8)
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results.append(deploy_figures("cnn-digits", "cnn", "digits", 15, {}, folder))
        results.append(deploy_figures("cnn-digits-qat", "cnn", "digits", 15, {"quant.qat": 2}, folder))
        results.append(deploy_figures("resnet18-cifar", "resnet18", args.resnet_data, args.resnet_epochs, {}, folder))
    searches: dict[str, list[float]] = {"one_objective": [], "two_objectives": []}
    for _ in range(args.searches):  # alternately: the machine's load changes under both alike
        searches["one_objective"].append(search_seconds(None, args.search_trials, args.search_epochs))
        searches["two_objectives"].append(search_seconds("val_accuracy,latency_ms", args.search_trials,
                                                         args.search_epochs))
    medians = {k: statistics.median(v) for k, v in searches.items() if v}
    document = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "int8": this_cpu().reason,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "deploy": results,
        "search": {"space": "deploy", "trials": args.search_trials, "max_epochs": args.search_epochs,
                   "seconds": searches, "median_s": medians,
                   "two_vs_one": round(medians["two_objectives"] / medians["one_objective"], 3) if medians else None},
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
