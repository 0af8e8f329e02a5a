"""Turn a set of trick values into what a training loop needs: the one adapter between the
registry's flat values ("optim.lr": 0.05, ...) and each trick's own keyword arguments.

The built-in trainer uses it, and so does a user's own loop (see examples/own_loop.py):

    setup = apply_tricks(values, model, num_classes=10, steps_per_epoch=len(loader), epochs=10, device="cuda")
    for epoch in range(10):
        setup.on_epoch_start(epoch)                            # unfreeze, gradual pruning, renorm ramp
        for x, labels in loader:
            x = setup.augment(x)                               # the policy, on uint8 images
            x, targets = setup.mix(normalize(x), setup.targets(labels))
            with setup.autocast():
                loss = setup.loss(setup.model(x), targets, inputs=x)   # inputs: for a distillation teacher
            setup.step(loss)                                   # backward, clip, optimizer, schedule
    setup.prune(example_inputs=x)  ...finetune...  sparsity = setup.finish_pruning()
    model = setup.export()                                     # plain weights: reparametrizations folded
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from autotrick.augment.policies import Policy
from autotrick.diagnose import check_model, count_activations
from autotrick.errors import ConfigError, ModelCheckWarning, TrickNote
from autotrick.params import Value
from autotrick.tricks import defaults
from autotrick.tricks.augment import AUGMENT, policy_transform
from autotrick.tricks.batch_renorm import renorm_limits, set_renorm_limits
from autotrick.tricks.clipping import CLIP, clip_gradients
from autotrick.tricks.distill import DISTILL, as_teacher, distillation_loss
from autotrick.tricks.dropout import DROPOUT, set_dropout
from autotrick.tricks.early_stop import EARLY_STOP, EarlyStopper
from autotrick.tricks.finetune import FINETUNE, backbone_parameters, lr_multipliers, set_frozen
from autotrick.tricks.head import classifier
from autotrick.tricks.init import INIT, initialize
from autotrick.tricks.loss import LOSS, class_weights, focal_loss
from autotrick.tricks.mixing import MIX, mix_batch
from autotrick.tricks.norm import NORM, swap_norms
from autotrick.tricks.optim import OPTIM, build_optimizer, l1_penalty
from autotrick.tricks.precision import PRECISION, autocast, grad_scaler, resolve_precision
from autotrick.tricks.pruning import (
    PRUNE,
    Sparsity,
    gradual_sparsity,
    keep_pruned,
    make_pruning_permanent,
    measure_sparsity,
    prune_channels,
    prune_weights,
)
from autotrick.tricks.quant import QUANT, start_qat, stop_qat
from autotrick.tricks.reparam import REPARAM, remove_reparametrizations, reparametrize
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


def prepare_trained(model: nn.Module, values: Mapping[str, Value], *, example_inputs: Tensor) -> nn.Module:
    """The structure of a model trained with `values`, to load its saved weights into: the norms
    and dropout as training placed them (seen, as in training, on `example_inputs`, a batch the
    model takes), and the channels structured pruning removed (how many depends only on the
    ratio). No initializer: the loaded weights replace whatever it would give. The
    reparametrizations are not there: a trained model is saved in plain form."""
    values = complete(values)
    model = swap_norms(model, example_inputs, **NORM.kwargs(values))
    model = set_dropout(model, example_inputs, **DROPOUT.kwargs(values))
    prune = PRUNE.kwargs(values)
    if prune["ratio"] and prune.get("structured"):
        prune_channels(model, ratio=float(prune["ratio"]), example_inputs=example_inputs,
                       keep=classifier(model, example_inputs))
    return model


def _optimizer(model: nn.Module, values: Mapping[str, Value], head: list[nn.Module]) -> torch.optim.Optimizer:
    """The optimizer, with the finetune trick's per-layer learning rates where it sets them."""
    finetune = FINETUNE.kwargs(values)
    multipliers = lr_multipliers(model, head=head, **finetune)
    return build_optimizer(model, lr_multipliers=multipliers, **OPTIM.kwargs(values))


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
    epochs: int = 1                            # the run's length, for the per-epoch tricks
    steps_per_epoch: int = 1
    teacher: nn.Module | None = None           # distillation's teacher (eval mode, frozen)
    class_counts: Tensor | None = None         # training labels per class, for loss.alpha
    head: list[nn.Module] = field(default_factory=list)  # the classifier layer(s), for finetune
    model_check: str = ""                      # the model check's warning ("" if none, or not run)

    def __post_init__(self) -> None:
        self._scaler = grad_scaler(self.precision, self.device)
        self._l1 = float(OPTIM.kwargs(self.values)["l1"])
        self._smoothing = SMOOTHING.kwargs(self.values)
        self._clip = CLIP.kwargs(self.values)
        self._mix = MIX.kwargs(self.values)
        self._prune = PRUNE.kwargs(self.values)
        self._loss = LOSS.kwargs(self.values)
        self._class_weights: Tensor | None = None
        if self._loss.get("name") == "focal" and self._loss.get("alpha") is not None:
            if self.class_counts is None:
                raise ConfigError("loss.alpha weighs classes by their counts: pass class_counts= (training labels "
                                  "per class) to apply_tricks")
            self._class_weights = class_weights(self.class_counts, float(self._loss["alpha"])).to(self.device)
        self._distill = DISTILL.kwargs(self.values)
        self._freeze_epochs = int(FINETUNE.kwargs(self.values)["freeze_epochs"])
        self._backbone = backbone_parameters(self.model, self.head) if self._freeze_epochs else []
        self._sparsity = 0.0  # reached by gradual pruning so far
        self._qat_epochs = int(QUANT.kwargs(self.values)["qat"])
        self._kept_zeros: Any = None
        self.on_epoch_start(0)  # the state of the first epoch: a frozen backbone, renorm held

    def targets(self, labels: Tensor) -> Tensor:
        """Soft targets with label smoothing: (1 - eps) * one_hot + eps / K."""
        return soft_targets(labels, self.num_classes, **self._smoothing)

    def augment(self, images: Tensor) -> Tensor:
        """The augmentation policy on a uint8 batch, where it is (each image its own random ops)."""
        if self.train_transform is None:
            return images
        return self.train_transform(images, self.generator)

    def mix(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return mix_batch(x, targets, generator=self.generator, **self._mix)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def loss(self, logits: Tensor, targets: Tensor, inputs: Tensor | None = None) -> Tensor:
        """Soft cross-entropy (or focal loss), with distillation from the teacher's logits for the
        same `inputs` when there is a teacher, plus the L1 penalty l1 * sum |w|."""
        if self._loss.get("name") == "focal":
            loss = focal_loss(logits, targets, gamma=float(self._loss["gamma"]),
                              alpha=self._class_weights)
        else:
            loss = soft_cross_entropy(logits, targets)
        if self.teacher is not None:
            if inputs is None:
                raise ValueError("distill.teacher is set: pass the batch too, setup.loss(logits, targets, inputs=x)")
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            loss = distillation_loss(logits, teacher_logits, loss, temperature=float(self._distill["temperature"]),
                                     alpha=float(self._distill["alpha"]))
        return loss + l1_penalty(self.model, self._l1) if self._l1 else loss

    def on_epoch_start(self, epoch: int) -> None:
        """The per-epoch tricks, at the start of epoch `epoch` (0-based) of `epochs`: the backbone
        frozen until finetune.freeze_epochs, the gradual pruning step, the batch-renorm ramp, fake
        quantization for the last quant.qat epochs."""
        if self._backbone:
            set_frozen(self._backbone, epoch < self._freeze_epochs)
        if self.prune_ratio > 0 and self._prune.get("schedule") == "gradual":
            sparsity = gradual_sparsity(epoch, epochs=self.epochs, ratio=self.prune_ratio,
                                        gradual_start=float(self._prune["gradual_start"]),
                                        gradual_end=float(self._prune["gradual_end"]))
            if sparsity > self._sparsity:  # only ever up: a pruned weight stays pruned
                self._prune_to(sparsity)
                self._sparsity = sparsity
        set_renorm_limits(self.model, *renorm_limits(epoch / max(self.epochs, 1)))
        if self._qat_epochs and epoch >= self.epochs - self._qat_epochs:
            start_qat(self.model)  # the parameters stay the same objects: the optimizer holds them

    def _prune_to(self, ratio: float) -> None:
        """Global magnitude pruning to `ratio` on the plain weights: earlier masks are folded in
        first (their zeros are the smallest weights, so they stay pruned)."""
        changed = remove_reparametrizations(self.model)
        make_pruning_permanent(self.model)
        prune_weights(self.model, ratio=ratio)
        if changed:
            self._rebuild_optimizer()

    def _rebuild_optimizer(self) -> None:
        """A new optimizer over the model's parameters as they are now (structured pruning and
        folding weight_norm make new ones), its schedule carried on from the step reached."""
        if self._backbone:
            set_frozen(self._backbone, False)  # the new optimizer must hold them
        step = self.scheduler.last_epoch
        self.optimizer = _optimizer(self.model, self.values, self.head)
        self.scheduler = build_scheduler(self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                                         start_step=step, **SCHEDULE.kwargs(self.values))
        if self._backbone:
            self._backbone = backbone_parameters(self.model, self.head)
            set_frozen(self._backbone, step < self._freeze_epochs * self.steps_per_epoch)

    def step(self, loss: Tensor) -> None:
        """Backward, unscale (fp16), clip, optimizer step, per-iteration schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        self._scaler.scale(loss).backward()
        self._scaler.unscale_(self.optimizer)
        clip_gradients(self.model, **self._clip)
        self._scaler.step(self.optimizer)
        self._scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def prune_ratio(self) -> float:
        return float(self._prune["ratio"])

    @property
    def finetune_epochs(self) -> int:
        return int(self._prune.get("finetune_epochs") or 0) if self.prune_ratio > 0 else 0

    def prune(self, example_inputs: Tensor | None = None) -> None:
        """Prune to the ratio after training: zero the smallest weights globally (the mask holds
        while finetuning), or, structured, remove channels (`example_inputs`: a batch the model
        takes, to trace which layers read them). Reparametrizations are folded in first."""
        if not self._prune.get("structured"):
            self._prune_to(self.prune_ratio)
            return
        if example_inputs is None:
            raise ValueError("prune.structured: pass a batch the model takes, setup.prune(example_inputs=x)")
        remove_reparametrizations(self.model)
        prune_channels(self.model, ratio=self.prune_ratio, example_inputs=example_inputs,
                       keep=classifier(self.model, example_inputs))
        self._rebuild_optimizer()

    def finish_pruning(self) -> Sparsity:
        """Make the pruning permanent and measure what is left. The zeros stay zero through later
        steps of this setup's optimizer; for another one, call autotrick.keep_pruned(model, it)."""
        make_pruning_permanent(self.model)
        if self._kept_zeros is None:
            self._kept_zeros = keep_pruned(self.model, self.optimizer)
        return measure_sparsity(self.model)

    def export(self) -> nn.Module:
        """The trained model in plain form, what is saved and registered: reparametrizations
        folded into plain weights (the optimizer follows, should training go on), fake quantization
        folded into the weights and its input quantizers removed."""
        stop_qat(self.model)
        if remove_reparametrizations(self.model):
            self._rebuild_optimizer()
        return self.model


def apply_tricks(values: Mapping[str, Value], model: nn.Module, *, num_classes: int, steps_per_epoch: int,
                 epochs: int, device: str | torch.device = "cpu", seed: int = 0,
                 prepare: bool = True, example: Tensor | None = None, teacher: nn.Module | None = None,
                 class_counts: Tensor | None = None) -> TrainingSetup:
    """Apply `values` (missing ones at their defaults) to `model` and build everything else.

    `example`: a small batch of inputs as the loop holds them (uint8 images are read as x / 255),
    for prepare_model, the classifier (finetune) and, when `prepare`, the model check that the
    trainer runs too: its warning is raised (ModelCheckWarning) and kept on `setup.model_check`.
    `teacher`: the distillation teacher's model, which distill.teacher needs (autotrick.load_model
    reads a reference). `class_counts`: the training labels per class, which loss.alpha needs."""
    values = complete(values)
    device = torch.device(device)
    model = model.to(device)  # first: the example runs where the model will train
    example = None if example is None else as_model_input(example).to(device)
    if values.get("distill.teacher") is not None and teacher is None:
        raise ConfigError(f"distill.teacher {values['distill.teacher']}: pass the teacher's model, "
                          f"teacher=autotrick.load_model({str(values['distill.teacher'])!r})")
    activations = count_activations(model, example) if prepare and example is not None else None
    if prepare:
        if example is None:
            say_example_missing(values)
        model = prepare_model(model, values, example)
    finetune = FINETUNE.kwargs(values)
    uses_head = finetune["freeze_epochs"] or finetune["head_lr_mult"] != 1.0 or finetune["layer_decay"] != 1.0
    head = classifier(model, example, num_classes=num_classes) if uses_head else []
    # Training-time reparametrization (removed again by export()): after the model-side tricks,
    # whoever applied those.
    model = reparametrize(model, **REPARAM.kwargs(values)).to(device)
    optimizer = _optimizer(model, values, head)
    if values.get("distill.teacher") is not None:
        teacher = as_teacher(teacher, device)  # type: ignore[arg-type]
    model_check = ""
    if activations is not None:
        model_check = check_model(model, example, activations_before=activations)  # type: ignore[arg-type]
        if model_check:
            warnings.warn(model_check, ModelCheckWarning, stacklevel=2)
    return TrainingSetup(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                  **SCHEDULE.kwargs(values)),
        values=values,
        num_classes=num_classes,
        device=device,
        precision=resolve_precision(device=device, **PRECISION.kwargs(values)),
        train_transform=policy_transform(**AUGMENT.kwargs(values)),
        early_stopper=EarlyStopper(**EARLY_STOP.kwargs(values)),
        generator=torch.Generator().manual_seed(seed),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        teacher=teacher if values.get("distill.teacher") is not None else None,
        class_counts=class_counts,
        head=head,
        model_check=model_check,
    )


def as_model_input(example: Tensor) -> Tensor:
    """A batch as the loop holds it, as the model takes it: uint8 images become x / 255 (the
    README's loop), other integer tensors floats; a float batch is taken as it is."""
    if example.dtype == torch.uint8:
        return example.float() / 255
    return example if example.is_floating_point() else example.float()


# Model-side tricks that read the model's layout from one traced pass, and what they guess without it.
_GUESSED_WITHOUT_EXAMPLE = {
    "norm.type": "which dimensions each norm normalizes",
    "dropout.p": "the classifier (the last Linear)",
}


def say_example_missing(values: Mapping[str, Value]) -> None:
    """Without an example batch: a ConfigError for a trick that cannot do without one, one line
    for those that guess the model's layout instead (before anything breaks later)."""
    if values.get("init.zero_last_norm"):
        raise ConfigError("init.zero_last_norm finds each residual branch in one forward pass: give an example "
                          "batch, apply(..., example=x)")
    if values.get("norm.type") == "instance":
        raise ConfigError("norm.type=instance is undefined on a 1x1 map, which only a forward pass shows: give an "
                          "example batch, apply(..., example=x)")
    guessed = [f"{key}={values[key]} guesses {what}" for key, what in _GUESSED_WITHOUT_EXAMPLE.items()
               if values.get(key) not in (None, "keep")]
    if guessed:
        warnings.warn(f"no example batch: {'; '.join(guessed)}; give apply(..., example=x) to trace the model",
                      TrickNote, stacklevel=3)
