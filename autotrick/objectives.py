"""Several objectives for one search: what each means, which way is better, how a trained model is
measured for it, and the Pareto front of the trials that finished.

    val_accuracy, val_loss   the trial's final validation metric (as for a one-objective search)
    latency_ms               PyTorch eager, one image, on the CPU: median of repeated runs after a warm-up
    params                   parameters of the trained model (structured pruning shrinks it; zeros count)
    size_mb                  its parameters and buffers, megabytes (10^6 bytes) as PyTorch holds them
    flops                    floating-point operations of one image's forward pass (torch.utils.flop_counter:
                             torch's own count, convolutions and matrix products)
    train_seconds            the trial's training time: its epochs' seconds summed (set-up and evaluation excluded)
    int8_accuracy            validation accuracy of the model as INT8 ONNX in ONNX Runtime (autotrick.deploy:
                             exported, quantized on CALIBRATION_IMAGES training images, evaluated)

A front point is a trial no other trial beats in every objective at once (Optuna's
study.best_trials, for the trials told COMPLETE). Its hypervolume, for the first two objectives:
the area the front dominates up to the reference point, a tenth of the range beyond the worst
value of each objective over the finished trials (in the objectives' own units). Optuna keeps its hypervolume private
(optuna._hypervolume); in two dimensions it is a sweep over the front sorted by one objective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from autotrick.errors import ConfigError

if TYPE_CHECKING:
    from autotrick.records import SearchResult, TrialRecord
    from autotrick.trainer import TrainConfig

DIRECTIONS = {"val_accuracy": "max", "val_loss": "min", "latency_ms": "min", "params": "min", "size_mb": "min",
              "flops": "min", "train_seconds": "min", "int8_accuracy": "max"}
TRIAL_METRICS = ("val_accuracy", "val_loss")  # what a trial reports every epoch: ASHA can stop on these
MEASURED = ("latency_ms", "params", "size_mb", "flops", "int8_accuracy")  # measured on the trained model
REFERENCE_MARGIN = 0.1  # the hypervolume's reference point, beyond the worst trial
INT8_CALIBRATION_IMAGES = 256  # per trial: fewer than an export's 512, a trial pays for it


@dataclass(frozen=True)
class Objective:
    name: str
    mode: str  # "max" | "min"

    @property
    def direction(self) -> str:
        return "maximize" if self.mode == "max" else "minimize"


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """`val_accuracy,latency_ms` -> the objectives; a one-line ConfigError for a bad list. The first
    is what ASHA stops trials on, so it is a metric trials report every epoch."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    allowed = ", ".join(DIRECTIONS)
    for name in names:
        if name not in DIRECTIONS:
            raise ConfigError(f"--objectives {text}: unknown objective '{name}'; expected a comma-separated list of "
                              f"{allowed}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--objectives {text}: expected two or more different objectives, e.g. "
                          "val_accuracy,latency_ms (one of them: use budget.metric)")
    if names[0] not in TRIAL_METRICS:
        raise ConfigError(f"--objectives {text}: the first objective is what ASHA stops trials on; expected "
                          f"{' or '.join(TRIAL_METRICS)} first, e.g. val_accuracy,{names[0]}")
    return tuple(Objective(n, DIRECTIONS[n]) for n in names)


def measure(model: nn.Module, names: Iterable[str], *, input_shape: tuple[int, int, int],
            data: str | None = None, data_dir: str | None = None) -> dict[str, float]:
    """The MEASURED objectives among `names` for a trained model (on the CPU, in eval mode)."""
    from autotrick.tricks.pruning import inference_ms

    wanted = set(names)
    model = model.eval().cpu()
    one = torch.randn(1, *input_shape)
    found: dict[str, float] = {}
    if "params" in wanted:
        found["params"] = float(sum(p.numel() for p in model.parameters()))
    if "size_mb" in wanted:
        found["size_mb"] = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    if "flops" in wanted:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(one)
        found["flops"] = float(counter.get_total_flops())
    if "latency_ms" in wanted:
        inference_ms(model, one, repeats=3)  # warm-up: a fresh model's first calls pick kernels, allocate
        found["latency_ms"] = inference_ms(model, one, repeats=20)
    if "int8_accuracy" in wanted:
        if data is None:
            raise ValueError("int8_accuracy needs the data set")
        found["int8_accuracy"] = int8_accuracy(model, data, data_dir)
    return found


def int8_accuracy(model: nn.Module, data: str, data_dir: str | None) -> float:
    """The model exported to ONNX, quantized to INT8 as `autotrick export --int8` does, and its
    validation accuracy in ONNX Runtime."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from autotrick.augment import normalize
    from autotrick.data import open_feed
    from autotrick.deploy import INPUT, export_onnx, onnx_session, quantize_int8, this_cpu

    feed = open_feed(data, data_dir, device=torch.device("cpu"))
    order = torch.randperm(feed.size.train_count, generator=torch.Generator().manual_seed(0))
    calibration = [normalize(x, feed.mean, feed.std).numpy()
                   for x, _ in feed.train_batches(order[:INT8_CALIBRATION_IMAGES], 64)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, torch.from_numpy(calibration[0][:2]), Path(tmp) / "model.onnx")
        session = onnx_session(quantize_int8(fp32, Path(tmp) / "model.int8.onnx", calibration, this_cpu()))
        correct = total = 0
        for x, y in feed.val_batches():
            logits = session.run(None, {INPUT: normalize(x, feed.mean, feed.std).numpy()})[0]
            correct += int((np.argmax(logits, 1) == y.numpy()).sum())
            total += len(y)
    return correct / total


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b in every objective and better in one."""
    signs = [1 if m == "max" else -1 for m in modes]
    at_least = all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True))
    return at_least and any(s * x > s * y for s, x, y in zip(signs, a, b, strict=True))


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float],
                   modes: tuple[str, str]) -> float:
    """The area that `points` dominate up to `reference`, in two objectives of `modes`."""
    # as minimization of both: flip the maximized ones
    flip = [(-1.0 if m == "max" else 1.0) for m in modes]
    ref = (reference[0] * flip[0], reference[1] * flip[1])
    pts = sorted((x * flip[0], y * flip[1]) for x, y in points if x * flip[0] <= ref[0] and y * flip[1] <= ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:  # x ascending: each point adds the strip between it and the best y so far
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def measure_trained(measured: dict[str, float], objectives: Iterable[str], train: TrainConfig, model: nn.Module,
                    then: Callable[[nn.Module], None] | None = None) -> None:
    """A trial's on_trained: its trained model measured into `measured` (on a copy: the trial goes
    on with its own), then `then` (saving it)."""
    import copy

    from autotrick.data import describe_data

    size = describe_data(train.data, train.data_dir)
    measured.update(measure(copy.deepcopy(model), objectives, input_shape=(size.in_channels, *size.image_size),
                            data=train.data, data_dir=train.data_dir))
    if then is not None:
        then(model)


def pareto_front(result: SearchResult) -> list[TrialRecord]:
    """The trials of a multi-objective search that no other finished trial beats in every objective,
    by the first objective (best first): Optuna's study.best_trials where the study is at hand,
    else the same test over the records."""
    names = result.info.objectives
    done = [r for r in result.records if r.successful and r.objective_values(names) is not None]
    study = result.study
    if study is not None and len(study.directions) == len(names) > 1:
        on_front = {t.number for t in study.best_trials}
        front = [r for r in done if r.number in on_front]
    else:
        modes = [DIRECTIONS[n] for n in names]
        values = {r.number: r.objective_values(names) for r in done}
        front = [r for r in done if not any(dominates(values[o.number], values[r.number], modes)  # type: ignore[arg-type]
                                            for o in done)]
    sign = -1 if DIRECTIONS[names[0]] == "max" else 1
    return sorted(front, key=lambda r: (sign * r.objective_values(names)[0], r.number))  # type: ignore[index]


def reference_point(result: SearchResult) -> tuple[float, float]:
    """The hypervolume's reference: in each of the first two objectives, the worst value over the
    finished trials, moved REFERENCE_MARGIN of their range further (so the extreme points of the
    front count too)."""
    names = result.info.objectives[:2]
    rows = [v for r in result.records if r.successful and (v := r.objective_values(names)) is not None]
    point = []
    for i, name in enumerate(names):
        column = [row[i] for row in rows]
        span = (max(column) - min(column)) or abs(column[0]) or 1.0
        sign = -1 if DIRECTIONS[name] == "max" else 1
        point.append((min(column) if sign < 0 else max(column)) + sign * REFERENCE_MARGIN * span)
    return point[0], point[1]


def front_hypervolume(result: SearchResult, front: list[TrialRecord]) -> float:
    names = result.info.objectives[:2]
    points = [tuple(r.objective_values(names)) for r in front]  # type: ignore[arg-type]
    return hypervolume_2d(points, reference_point(result), (DIRECTIONS[names[0]], DIRECTIONS[names[1]]))  # type: ignore[arg-type]
