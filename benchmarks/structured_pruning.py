"""Structured pruning: parameters and CPU inference time of a resnet18 before and after whole
channels are removed (autotrick.tricks.pruning.prune_channels), at a few ratios.

    python benchmarks/structured_pruning.py [--threads 2] [--batch 32] [--repeats 5]

Each model runs on the same random batch of 32x32 images in eval mode; the dense and the pruned
models are timed in turns (`--repeats` rounds of autotrick.tricks.pruning.inference_ms, each the
median of 5 forward passes), and the best round of each is reported (other processes share the
CPU). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform

import torch
import torchvision

from autotrick.models import cifar_resnet18
from autotrick.tricks.pruning import inference_ms, prune_channels


def measure(name: str, model: torch.nn.Module, ratio: float, x: torch.Tensor, repeats: int) -> dict[str, object]:
    dense = model.eval()
    pruned = copy.deepcopy(dense)
    prune_channels(pruned, ratio=ratio, example_inputs=x[:2], keep=[pruned.fc])
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    for _ in range(repeats):
        times["dense"].append(inference_ms(dense, x))
        times["pruned"].append(inference_ms(pruned, x))
    params = {key: sum(p.numel() for p in m.parameters()) for key, m in (("dense", dense), ("pruned", pruned))}
    best = {key: min(values) for key, values in times.items()}
    return {"model": name, "ratio": ratio, "params_dense": params["dense"], "params_pruned": params["pruned"],
            "params_ratio": round(params["pruned"] / params["dense"], 4),
            "inference_ms_dense": round(best["dense"], 2), "inference_ms_pruned": round(best["pruned"], 2),
            "speedup": round(best["dense"] / best["pruned"], 2),
            "rounds_ms": {key: [round(v, 2) for v in values] for key, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    results = []
    for ratio in (0.3, 0.5):
        results.append(measure("resnet18 (torchvision)", torchvision.models.resnet18(weights=None, num_classes=10),
                               ratio, x, args.repeats))
        results.append(measure("resnet18 (autotrick, CIFAR stem)", cifar_resnet18(10, 3), ratio, x, args.repeats))
    print(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                                  "load_average": os.getloadavg(), "torch": torch.__version__},
                      "batch": [args.batch, 3, 32, 32], "results": results}, indent=2))


if __name__ == "__main__":
    main()
