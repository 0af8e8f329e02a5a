"""One trial: build the data, the model and the tricks from a dict of values, train, evaluate,
and report after every epoch through a callback. Imports neither Ray nor MLflow.

Batches come from a Feed (autotrick.data): uint8 images already on the device, sliced from tensors
held there when the data set fits in memory, streamed by a DataLoader when it does not.
The training step never reads a tensor back to the host (no sync per step: the GPU's queue runs
ahead); the epoch's summed loss is read once at its end, and a non-finite loss in any step makes
it non-finite, which ends the trial as diverged. Running out of memory ends it as oom (records.Outcome).

The model-side tricks see the model run once on a few training images (where the classifier is,
what each norm sees), and diagnose.check_model looks at the result on the same images before the
first epoch: what the tricks said (TrickNote warnings) and the check's one-line warning, if the
tricks damaged the model, go to `on_prepared`, to the result, and (the warning) to every epoch's
report, so that a search records it as the trial's reason.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from autotrick.apply import TrainingSetup, apply_tricks, prepare_model
from autotrick.augment import basic_augment, normalize
from autotrick.checkpoint import build_initial_model, load_teacher
from autotrick.data import Feed, open_feed
from autotrick.diagnose import check_model, count_activations
from autotrick.errors import TrickNote, first_line
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
    data_mode: str = "auto"  # memory | stream | auto (by size: autotrick.data.placement)
    weights: str | None = None  # a checkpoint or state dict (absolute path) the model starts from
    teachers: tuple[tuple[str, str], ...] = ()  # distill.teacher reference -> its local checkpoint
    skip_bad_images: bool = False  # an image folder's unreadable files are left out (data.bad_images)


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
    warning: str = ""  # the model check's warning (diagnose.py), on every report
    # (optimizer step counted over the run, lr used by that step): at most _LR_POINTS per epoch, so
    # warmup shows without a point per step of a long epoch
    step_lrs: list[tuple[int, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k not in ("outcome", "warning", "step_lrs")}


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
    notes: list[str] = field(default_factory=list)  # what the model-side tricks did (TrickNote)
    warning: str = ""  # the model check's one line when the tricks damaged the model


Report = Callable[[EpochReport], None]
_LR_POINTS = 20  # per-step learning rates kept per epoch (a 200-epoch trial: 4,000 points)
EXAMPLE_IMAGES = 4  # the batch the tricks and the model check see (more than 1: batch norm trains)


def run_trial(values: Mapping[str, Value], config: TrainConfig, report: Report | None = None, *,
              on_trained: Callable[[nn.Module], None] | None = None,
              on_prepared: Callable[[list[str], str], None] | None = None) -> TrialResult:
    """Train once with `values`; call `report` after each epoch (the last one carries the outcome).
    `on_trained` gets the trained model of a successful run before the last report, which may be the
    last thing a scheduler lets a trial do. `on_prepared` gets, before training, one line per thing
    the model-side tricks said and the model check's warning ("" if none)."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    # A stream reads with the trial's CPUs: its threads in a search, every core otherwise.
    data = open_feed(config.data, config.data_dir, device=device, mode=config.data_mode,
                     workers=config.threads or os.cpu_count(), skip_bad_images=config.skip_bad_images)
    torch.manual_seed(config.seed)
    model = build_initial_model(config.model, weights=config.weights, num_classes=data.size.num_classes,
                                in_channels=data.size.in_channels, image_size=data.size.image_size)
    steps_per_epoch = math.ceil(data.size.train_count / config.batch_size)
    model, example = model.to(device), _example(data)
    activations = count_activations(model, example)
    model, notes = _prepare(model, values, example)
    teacher = values.get("distill.teacher")
    setup = apply_tricks(values, model, num_classes=data.size.num_classes, steps_per_epoch=steps_per_epoch,
                         epochs=config.epochs, device=device, seed=config.seed, prepare=False, example=example,
                         teacher=load_teacher(str(teacher), dict(config.teachers), device) if teacher else None,
                         class_counts=data.class_counts() if values.get("loss.alpha") is not None else None)
    warning = check_model(setup.model, example, activations_before=activations)
    if on_prepared is not None:
        on_prepared(notes, warning)
    channels_last = _is_conv_net(setup.model)  # faster convolutions on CUDA and on the CPU alike
    if channels_last:
        setup.model = setup.model.to(memory_format=torch.channels_last)
    loop = _Loop(setup, data, config, setup_seconds=time.perf_counter() - started, on_trained=on_trained,
                 channels_last=channels_last, warning=warning)
    try:
        result = loop.run(report or (lambda _: None))
    except torch.OutOfMemoryError as exc:
        result = TrialResult(Outcome.OOM, len(loop.history), math.nan, math.nan, loop.history,
                             reason=first_line(exc))
    result.notes, result.warning = notes, warning
    return result


def _example(data: Feed) -> Tensor:
    """The first few training images, normalized: the batch the model-side tricks and the model
    check run the model on (more than one image: batch norm trains)."""
    images, _ = next(iter(data.train_batches(torch.arange(min(EXAMPLE_IMAGES, data.size.train_count)),
                                             EXAMPLE_IMAGES)))
    return normalize(images, data.mean, data.std)


def _prepare(model: nn.Module, values: Mapping[str, Value], example: Tensor) -> tuple[nn.Module, list[str]]:
    """The model-side tricks, with what they said (TrickNote warnings) collected, not printed;
    any other warning goes on as it came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrickNote)
        model = prepare_model(model, values, example)
    notes = []
    for w in caught:
        if issubclass(w.category, TrickNote):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model, notes


@dataclass
class _Loop:
    setup: TrainingSetup
    data: Feed
    config: TrainConfig
    setup_seconds: float = 0.0
    on_trained: Callable[[nn.Module], None] | None = None
    channels_last: bool = False
    warning: str = ""
    history: list[EpochReport] = field(default_factory=list)
    steps_done: int = 0  # optimizer steps so far: the x axis of the per-step learning rate

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
        images, _ = next(iter(self.data.val_batches()))  # what inference is timed on, before and after
        batch = _layout(normalize(images[:self.config.batch_size], self.data.mean, self.data.std), self.channels_last)
        model = self.setup.export()  # plain weights, as pruning leaves them: the same model measured twice
        dense = {"params_dense": sum(p.numel() for p in model.parameters()),
                 "inference_ms_dense": inference_ms(model, batch)}
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
        setup, data = self.setup, self.data
        started = time.perf_counter()
        setup.on_epoch_start(epoch - 1)
        setup.model.train()
        order = torch.randperm(data.size.train_count, generator=setup.generator)
        lrs: list[float] = []  # the lr is a Python float in the optimizer's param groups: no sync
        total_loss, seen = train_steps(setup, data, data.train_batches(order, self.config.batch_size),
                                       channels_last=self.channels_last, lrs=lrs)
        _sync(setup.device)
        seconds = time.perf_counter() - started
        train_loss = float(total_loss) / seen  # the epoch's one read-back: non-finite if any step's loss was
        if not math.isfinite(train_loss):  # diverged: the epoch is discarded, no evaluation of a NaN model
            return EpochReport(epoch, math.nan, math.nan, math.nan, setup.lr, seconds, 0.0, self.setup_seconds,
                               warning=self.warning, step_lrs=self._thinned(lrs))
        val_loss, val_accuracy = self._evaluate()
        return EpochReport(epoch, train_loss, val_loss, val_accuracy, setup.lr, seconds, seen / seconds,
                           self.setup_seconds, warning=self.warning, step_lrs=self._thinned(lrs))

    def _thinned(self, lrs: list[float]) -> list[tuple[int, float]]:
        """This epoch's per-step learning rates, numbered over the run, evenly thinned to _LR_POINTS."""
        first, self.steps_done = self.steps_done, self.steps_done + len(lrs)
        stride = max(1, math.ceil(len(lrs) / _LR_POINTS))
        return [(first + i + 1, lr) for i, lr in enumerate(lrs) if i % stride == 0 or i == len(lrs) - 1]

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        setup, data = self.setup, self.data
        setup.model.eval()
        loss_sum, correct = torch.zeros((), device=setup.device), torch.zeros((), device=setup.device)
        for images, y in data.val_batches():
            x = normalize(images, data.mean, data.std)
            with setup.autocast():
                logits = setup.model(_layout(x, self.channels_last)).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = data.size.val_count
        return float(loss_sum) / n, float(correct) / n


def train_steps(setup: TrainingSetup, data: Feed, batches: Iterable[tuple[Tensor, Tensor]], *,
                channels_last: bool = False, lrs: list[float] | None = None) -> tuple[Tensor, int]:
    """One optimizer step per batch of uint8 images and labels on the device; returns the summed
    loss (a device tensor) and the number of images. Nothing here waits for the device: no
    `.item()`, `float()` or `if` on a tensor (tests/test_trainer.py counts them), so a GPU's queue
    runs ahead of the Python loop. A non-finite loss is not checked here: it makes the sum
    non-finite, which the epoch reads once; the steps after it run on, and the epoch is discarded.
    `lrs`, when given, gets each step's learning rate (a Python float: no read-back)."""
    total_loss, seen = torch.zeros((), device=setup.device), 0
    for x, labels in _augmented(batches, setup, data):
        x, targets = setup.mix(normalize(x, data.mean, data.std), setup.targets(labels))
        with setup.autocast():
            x = _layout(x, channels_last)
            loss = setup.loss(setup.model(x), targets, inputs=x)  # inputs: distillation's teacher sees them
        if lrs is not None:
            lrs.append(setup.lr)
        setup.step(loss)
        total_loss += loss.detach() * len(labels)
        seen += len(labels)
    return total_loss, seen


AUGMENT_BLOCK_BYTES = 1 << 20  # small images are augmented this many bytes of batches at a time


def _augmented(batches: Iterable[tuple[Tensor, Tensor]], setup: TrainingSetup,
               data: Feed) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches through the basic augmentation and the policy, each image its own draw. Batches
    of small images go through together, up to AUGMENT_BLOCK_BYTES (a digits epoch is one block,
    a CIFAR batch of 256 its own): the ops' fixed cost per call (~0.3-0.5 ms on the CPU, a few
    dozen kernel launches on a GPU) is paid once per block instead of once per batch."""
    block: list[tuple[Tensor, Tensor]] = []
    for images, labels in batches:
        if block and sum(b.numel() for b, _ in block) + images.numel() > AUGMENT_BLOCK_BYTES:
            yield from _augment_block(block, setup, data)
            block = []
        block.append((images, labels))
    if block:
        yield from _augment_block(block, setup, data)


def _augment_block(block: list[tuple[Tensor, Tensor]], setup: TrainingSetup,
                   data: Feed) -> Iterator[tuple[Tensor, Tensor]]:
    if setup.train_transform is None and not data.crop_padding and not data.flip:
        return iter(block)  # nothing to augment: no need to join the batches
    images = torch.cat([b for b, _ in block]) if len(block) > 1 else block[0][0]
    x = setup.augment(basic_augment(images, crop_padding=data.crop_padding, flip=data.flip,
                                    generator=setup.generator))
    return zip(x.split([len(b) for b, _ in block]), (labels for _, labels in block), strict=True)


def _layout(x: Tensor, channels_last: bool) -> Tensor:
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
