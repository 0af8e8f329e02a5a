"""One trial: build the data, the model and the tricks from a dict of values, train, evaluate,
and report after every epoch through a callback. Imports neither Ray nor MLflow.

The data set is kept on the device as uint8 tensors and sliced into batches (no DataLoader): for
data that fits in memory this is what makes small trials fast, on the CPU and on a GPU.
A non-finite loss ends the trial as diverged; running out of memory ends it as oom (records.Outcome).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor, nn

from autotrick.apply import TrainingSetup, apply_tricks
from autotrick.augment import basic_augment, normalize
from autotrick.checkpoint import build_initial_model, load_teacher
from autotrick.data import ImageData, load_data
from autotrick.errors import first_line
from autotrick.params import Value
from autotrick.records import Outcome
from autotrick.tricks.pruning import inference_ms


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a run that is not a trick."""

    model: str = "cnn"
    data: str = "digits"
    data_dir: str | None = None
    epochs: int = 15
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    weights: str | None = None  # a checkpoint or state dict (absolute path) the model starts from
    teachers: tuple[tuple[str, str], ...] = ()  # distill.teacher reference -> its local checkpoint


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_s: float
    setup_seconds: float = 0.0  # the trial's set-up before its first epoch: data, model, tricks
    outcome: Outcome | None = None  # set on the trial's last report only

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "outcome"}


@dataclass
class TrialResult:
    """One training run: how it ended, its last metrics, its curves and what it measured."""

    outcome: Outcome
    epochs_run: int
    val_accuracy: float
    val_loss: float
    history: list[EpochReport] = field(default_factory=list)
    reason: str = ""
    measurements: dict[str, float] = field(default_factory=dict)  # e.g. sparsity after pruning
    train_seconds: float = 0.0


Report = Callable[[EpochReport], None]


def run_trial(values: Mapping[str, Value], config: TrainConfig, report: Report | None = None, *,
              on_trained: Callable[[nn.Module], None] | None = None) -> TrialResult:
    """Train once with `values`; call `report` after each epoch (the last one carries the outcome).
    `on_trained` gets the trained model of a successful run before the last report, which may be the
    last thing a scheduler lets a trial do."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    data = _data_on(config, device)
    torch.manual_seed(config.seed)
    model = build_initial_model(config.model, weights=config.weights, num_classes=data.num_classes,
                                in_channels=data.in_channels, image_size=data.image_size)
    steps_per_epoch = math.ceil(len(data.train_y) / config.batch_size)
    teacher = values.get("distill.teacher")
    setup = apply_tricks(values, model, num_classes=data.num_classes, steps_per_epoch=steps_per_epoch,
                         epochs=config.epochs, device=device, seed=config.seed,
                         teacher=load_teacher(str(teacher), dict(config.teachers), device) if teacher else None,
                         class_counts=torch.bincount(data.train_y, minlength=data.num_classes))
    channels_last = _is_conv_net(setup.model)  # faster convolutions on CUDA and on the CPU alike
    if channels_last:
        setup.model = setup.model.to(memory_format=torch.channels_last)
    loop = _Loop(setup, data, config, setup_seconds=time.perf_counter() - started, on_trained=on_trained,
                 channels_last=channels_last)
    try:
        result = loop.run(report or (lambda _: None))
    except torch.OutOfMemoryError as exc:
        result = TrialResult(Outcome.OOM, len(loop.history), math.nan, math.nan, loop.history,
                             reason=first_line(exc))
    return result


@dataclass
class _Loop:
    setup: TrainingSetup
    data: ImageData
    config: TrainConfig
    setup_seconds: float = 0.0
    on_trained: Callable[[nn.Module], None] | None = None
    channels_last: bool = False
    history: list[EpochReport] = field(default_factory=list)

    def run(self, report: Report) -> TrialResult:
        setup, started = self.setup, time.perf_counter()
        for epoch in range(1, self.config.epochs + 1):
            epoch_report = self._epoch(epoch)
            last = epoch == self.config.epochs or setup.early_stopper.update(epoch_report.val_accuracy)
            if not math.isfinite(epoch_report.train_loss):
                return self._end(epoch_report, Outcome.DIVERGED, report, started,
                                 reason=f"non-finite training loss in epoch {epoch}")
            if last:
                outcome = Outcome.FINISHED if epoch == self.config.epochs else Outcome.PATIENCE_STOPPED
                return self._finish(epoch_report, outcome, report, started)
            self.history.append(epoch_report)
            report(epoch_report)
        raise AssertionError("unreachable: the last epoch returns")

    def _finish(self, last: EpochReport, outcome: Outcome, report: Report, started: float) -> TrialResult:
        """Pruning happens after training: prune, finetune with the mask held, make it permanent."""
        if self.setup.prune_ratio <= 0:
            return self._end(last, outcome, report, started)
        batch = self._layout(normalize(self.data.val_x[:self.config.batch_size], self.data.mean, self.data.std))
        dense = {"params_dense": sum(p.numel() for p in self.setup.model.parameters()),
                 "inference_ms_dense": inference_ms(self.setup.model, batch)}
        self.setup.prune(example_inputs=batch[:2])
        for i in range(self.setup.finetune_epochs):
            last = self._epoch(last.epoch)  # finetune epochs are not new epochs of the budget
            if not math.isfinite(last.train_loss):
                return self._end(last, Outcome.DIVERGED, report, started,
                                 reason=f"non-finite loss in finetune {i + 1}")
        sparsity = self.setup.finish_pruning()
        last.val_loss, last.val_accuracy = self._evaluate()
        return self._end(last, outcome, report, started, measurements={
            "sparsity": sparsity.sparsity, "nonzero_params": sparsity.nonzero_params,
            "params": sparsity.total_params, "inference_ms": inference_ms(self.setup.model, batch), **dense})

    def _end(self, last: EpochReport, outcome: Outcome, report: Report, started: float, *, reason: str = "",
             measurements: dict[str, float] | None = None) -> TrialResult:
        last.outcome = outcome
        self.history.append(last)
        if self.on_trained is not None and outcome.successful:
            self.on_trained(self.setup.export())
        report(last)
        return TrialResult(outcome, last.epoch, last.val_accuracy, last.val_loss, self.history, reason=reason,
                           measurements=measurements or {}, train_seconds=time.perf_counter() - started)

    def _epoch(self, epoch: int) -> EpochReport:
        setup, data, device = self.setup, self.data, self.setup.device
        started = time.perf_counter()
        setup.on_epoch_start(epoch - 1)
        setup.model.train()
        order = torch.randperm(len(data.train_y), generator=setup.generator).to(device)
        total_loss, seen = torch.zeros((), device=device), 0
        for start in range(0, len(order), self.config.batch_size):
            index = order[start:start + self.config.batch_size]
            x = setup.augment(basic_augment(data.train_x[index], crop_padding=data.crop_padding,
                                            flip=data.flip, generator=setup.generator))
            x, targets = setup.mix(normalize(x, data.mean, data.std), setup.targets(data.train_y[index]))
            with setup.autocast():
                x = self._layout(x)
                loss = setup.loss(setup.model(x), targets, inputs=x)
            if not torch.isfinite(loss):  # one check per step: a diverged run stops at once
                return EpochReport(epoch, math.nan, math.nan, math.nan, setup.lr,
                                   time.perf_counter() - started, 0.0, self.setup_seconds)
            setup.step(loss)
            total_loss += loss.detach() * len(index)
            seen += len(index)
        _sync(device)
        seconds = time.perf_counter() - started
        val_loss, val_accuracy = self._evaluate()
        return EpochReport(epoch, float(total_loss) / seen, val_loss, val_accuracy, setup.lr, seconds,
                           seen / seconds, self.setup_seconds)

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        setup, data = self.setup, self.data
        setup.model.eval()
        loss_sum, correct = torch.zeros((), device=setup.device), torch.zeros((), device=setup.device)
        for start in range(0, len(data.val_y), 1024):
            x = normalize(data.val_x[start:start + 1024], data.mean, data.std)
            y = data.val_y[start:start + 1024]
            with setup.autocast():
                logits = setup.model(self._layout(x)).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = len(data.val_y)
        return float(loss_sum) / n, float(correct) / n

    def _layout(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def _data_on(config: TrainConfig, device: torch.device) -> ImageData:
    """The data set, on the device: loaded once per process (load_data caches), moved once."""
    data = load_data(config.data, config.data_dir)
    if device.type == "cpu":
        return data
    key = (config.data, config.data_dir, str(device))
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = replace(data, train_x=data.train_x.to(device), train_y=data.train_y.to(device),
                                     val_x=data.val_x.to(device), val_y=data.val_y.to(device))
    return _DEVICE_CACHE[key]


_DEVICE_CACHE: dict[tuple[str, str | None, str], ImageData] = {}


def _is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
