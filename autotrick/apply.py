"""Turn a set of trick values into what a training loop needs: the one adapter between the
registry's flat values ("optim.lr": 0.05, ...) and each trick's own keyword arguments.

The built-in trainer uses it, and so does a user's own loop (see examples/own_loop.py):

    setup = apply_tricks(values, model, num_classes=10, steps_per_epoch=len(loader), epochs=10, device="cuda")
    for x, labels in loader:
        x = setup.augment(x)                                   # the policy, on uint8 images
        x, targets = setup.mix(normalize(x), setup.targets(labels))
        with setup.autocast():
            loss = setup.loss(setup.model(x), targets)
        setup.step(loss)                                       # backward, clip, optimizer, schedule
    setup.prune()  ...finetune...  sparsity = setup.finish_pruning()
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autotrick.augment.policies import Policy
from autotrick.params import Value
from autotrick.tricks import defaults
from autotrick.tricks.augment import AUGMENT, policy_transform
from autotrick.tricks.clipping import CLIP, clip_gradients
from autotrick.tricks.dropout import DROPOUT, set_dropout
from autotrick.tricks.early_stop import EARLY_STOP, EarlyStopper
from autotrick.tricks.init import INIT, initialize
from autotrick.tricks.mixing import MIX, mix_batch
from autotrick.tricks.norm import NORM, swap_norms
from autotrick.tricks.optim import OPTIM, build_optimizer, l1_penalty
from autotrick.tricks.precision import PRECISION, autocast, grad_scaler, resolve_precision
from autotrick.tricks.pruning import PRUNE, Sparsity, make_pruning_permanent, measure_sparsity, prune_weights
from autotrick.tricks.schedule import SCHEDULE, build_scheduler
from autotrick.tricks.smoothing import SMOOTHING, soft_cross_entropy, soft_targets

# The same recipe and seed must train to the same model on any number of CPU threads: a search
# trains each trial on cpus_per_trial threads, `autotrick train --recipe` on every core. MKL's
# sgemm splits a long reduction between threads (a Linear layer's weight gradient over a batch
# of 128: the sums differ in the last bits, and training drifts, 2 digits of 360 apart after 4
# epochs); its strict conditional numerical reproducibility makes gemm independent of the thread
# count (oneDNN's convolutions already are). MKL reads it at its first call, after this import
# in any autotrick training; an MKL_CBWR set by the user wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def complete(values: Mapping[str, Value]) -> dict[str, Value]:
    """Fill every parameter a caller left out with its default (the baseline)."""
    return {**defaults(), **values}


def prepare_model(model: nn.Module, values: Mapping[str, Value], example: Tensor | None = None) -> nn.Module:
    """Model-side tricks, in the order that makes sense: swap norms and set dropout first, so that
    the initializer also covers the layers they added. `example`, a small batch the model takes,
    lets each trick see the model run once (init.zero_last_norm needs it)."""
    values = complete(values)
    model = swap_norms(model, example, **NORM.kwargs(values))
    model = set_dropout(model, example, **DROPOUT.kwargs(values))
    return initialize(model, example, **INIT.kwargs(values))


@dataclass
class TrainingSetup:
    """The tricks applied to one model: call these from any training loop."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    values: dict[str, Value]
    num_classes: int
    device: torch.device
    precision: str
    train_transform: Policy | None
    early_stopper: EarlyStopper
    generator: torch.Generator

    def __post_init__(self) -> None:
        self._scaler = grad_scaler(self.precision, self.device)
        self._l1 = float(OPTIM.kwargs(self.values)["l1"])  # type: ignore[arg-type]
        self._smoothing = SMOOTHING.kwargs(self.values)
        self._clip = CLIP.kwargs(self.values)
        self._prune = PRUNE.kwargs(self.values)

    def targets(self, labels: Tensor) -> Tensor:
        """Soft targets with label smoothing: (1 - eps) * one_hot + eps / K."""
        return soft_targets(labels, self.num_classes, **self._smoothing)  # type: ignore[arg-type]

    def augment(self, images: Tensor) -> Tensor:
        """The augmentation policy on a uint8 batch, where it is (each image its own random ops)."""
        if self.train_transform is None:
            return images
        return self.train_transform(images, self.generator)

    def mix(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return mix_batch(x, targets, generator=self.generator, **MIX.kwargs(self.values))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Soft cross-entropy plus the L1 penalty l1 * sum |w|."""
        loss = soft_cross_entropy(logits, targets)
        return loss + l1_penalty(self.model, self._l1) if self._l1 else loss

    def step(self, loss: Tensor) -> None:
        """Backward, unscale (fp16), clip, optimizer step, per-iteration schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        self._scaler.scale(loss).backward()
        self._scaler.unscale_(self.optimizer)
        clip_gradients(self.model, **self._clip)  # type: ignore[arg-type]
        self._scaler.step(self.optimizer)
        self._scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def prune_ratio(self) -> float:
        return float(self._prune["ratio"])  # type: ignore[arg-type]

    @property
    def finetune_epochs(self) -> int:
        return int(self._prune.get("finetune_epochs") or 0) if self.prune_ratio > 0 else 0  # type: ignore[arg-type]

    def prune(self) -> None:
        """Zero the smallest weights globally; the mask holds while finetuning."""
        prune_weights(self.model, ratio=self.prune_ratio)

    def finish_pruning(self) -> Sparsity:
        """Make the pruning permanent and measure what is left."""
        make_pruning_permanent(self.model)
        return measure_sparsity(self.model)


def apply_tricks(values: Mapping[str, Value], model: nn.Module, *, num_classes: int, steps_per_epoch: int,
                 epochs: int, device: str | torch.device = "cpu", seed: int = 0,
                 prepare: bool = True, example: Tensor | None = None) -> TrainingSetup:
    """Apply `values` (missing ones at their defaults) to `model` and build everything else;
    `example`: a small batch for prepare_model."""
    values = complete(values)
    device = torch.device(device)
    model = model.to(device)  # first: the example runs where the model will train
    if prepare:
        model = prepare_model(model, values, None if example is None else example.to(device))
    optimizer = build_optimizer(model, **OPTIM.kwargs(values))
    return TrainingSetup(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                  **SCHEDULE.kwargs(values)),
        values=values,
        num_classes=num_classes,
        device=device,
        precision=resolve_precision(device=device, **PRECISION.kwargs(values)),  # type: ignore[arg-type]
        train_transform=policy_transform(**AUGMENT.kwargs(values)),
        early_stopper=EarlyStopper(**EARLY_STOP.kwargs(values)),  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(seed),
    )
