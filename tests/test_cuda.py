"""The CUDA paths, on a real GPU: every trick on resnet18 for a couple of steps, bf16 and fp16 (with
the grad scaler), channels_last, pruning, data on the device. Every test here skips without CUDA
(the sync check is in test_trainer.py, GPU JPEG decoding in test_data_stream.py, a GPU-share
trial in test_search_gpu.py), except the check that every registered trick has a case here, which
runs everywhere (on a machine without CUDA too, so CI sees a trick added without one)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from autotrick.data import open_feed
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks import TRICKS

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Each trick turned on (one setting each; a few have a second one where the paths differ).
ON: dict[str, list[dict[str, object]]] = {
    "norm": [{"norm.type": "group", "norm.groups": 16}, {"norm.type": "layer"}],
    "dropout": [{"dropout.p": 0.2}],
    "init": [{"init.scheme": "kaiming_normal", "init.zero_last_norm": True}],
    "optim": [{"optim.name": "adamw", "optim.weight_decay": 0.01, "optim.no_decay_bias_norm": True},
              {"optim.name": "sgd", "optim.nesterov": True, "optim.l1": 1e-5}, {"optim.name": "rmsprop"}],
    "schedule": [{"schedule.name": "cosine", "schedule.warmup_epochs": 0.5}],
    "smoothing": [{"smoothing.eps": 0.1}],
    "mix": [{"mix.mixup_alpha": 0.2, "mix.cutmix_alpha": 1.0}],
    "augment": [{"augment.policy": "trivialaugment"}, {"augment.policy": "randaugment"}],
    "precision": [{"precision.dtype": "bf16"}, {"precision.dtype": "fp16"}],
    "clip": [{"clip.max_norm": 1.0}],
    "early_stop": [{"early_stop.patience": 1}],
    "prune": [{"prune.ratio": 0.5, "prune.finetune_epochs": 1}],
    "loss": [{"loss.name": "focal", "loss.gamma": 2.0}],
    "distill": [{"distill.teacher": "TEACHER", "distill.temperature": 4.0, "distill.alpha": 0.5}],
    "finetune": [{"finetune.freeze_epochs": 1, "finetune.head_lr_mult": 4.0, "finetune.layer_decay": 0.8}],
    "reparam": [{"reparam.type": "weight_norm"}, {"reparam.type": "spectral_norm"}],
    "quant": [{"quant.qat": 1}],
}
CASES = [(name, values) for name, settings in ON.items() for values in settings]
SMALL = TrainConfig(model="resnet18", data="synthetic:cifar10:256", epochs=1, batch_size=128, device="cuda",
                    data_mode="memory")


def test_every_registered_trick_has_a_cuda_case() -> None:
    assert {trick.name for trick in TRICKS} <= set(ON)
    assert all(resolve_values({k: v for k, v in values.items() if v != "TEACHER"}, "test") for _, values in CASES)


@needs_cuda
@pytest.mark.parametrize(("trick", "values"), CASES, ids=[f"{name}-{i}" for i, (name, _) in enumerate(CASES)])
def test_each_trick_trains_resnet18_on_cuda(trick: str, values: dict[str, object], tmp_path: Path) -> None:
    if values.get("distill.teacher") == "TEACHER":  # a teacher checkpoint of the same classes
        from autotrick.checkpoint import save_checkpoint
        from autotrick.models import build_model

        teacher = build_model("resnet18", num_classes=10, in_channels=3, image_size=(32, 32))
        path = save_checkpoint(tmp_path / "teacher.pt", teacher, spec="resnet18", tricks={}, num_classes=10,
                               input_shape=(3, 32, 32))
        values = {**values, "distill.teacher": str(path)}
    trained: list[nn.Module] = []
    result = run_trial(resolve_values(values, "test"), SMALL, on_trained=trained.append)
    assert result.outcome == "finished", result.reason
    assert math.isfinite(result.val_loss) and 0 <= result.val_accuracy <= 1
    model = trained[0]
    assert all(p.is_cuda for p in model.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    if trick == "prune":
        assert result.measurements["sparsity"] == pytest.approx(0.5, abs=0.01)


@needs_cuda
def test_fp16_and_bf16_steps_with_a_fused_optimizer() -> None:
    """fp16 (grad scaler) and bf16 autocast, a step each; the optimizer is fused, so fp16's scaler
    hands it the inf check as a tensor (no read-back)."""
    from autotrick.apply import apply_tricks
    from autotrick.models import build_model

    for dtype in ("fp16", "bf16"):
        model = build_model("resnet18", num_classes=10, in_channels=3, image_size=(32, 32))
        setup = apply_tricks(resolve_values({"precision.dtype": dtype}, "test"), model, num_classes=10,
                             steps_per_epoch=1, epochs=1, device="cuda")
        assert setup.precision == dtype
        x = torch.randn(8, 3, 32, 32, device="cuda")
        with setup.autocast():
            loss = setup.loss(setup.model(x), setup.targets(torch.zeros(8, dtype=torch.long, device="cuda")))
        setup.step(loss)
        assert all(torch.isfinite(p).all() for p in setup.model.parameters())
        assert setup.optimizer.defaults.get("fused") is True


@needs_cuda
def test_data_lives_on_the_device_once_per_process() -> None:
    feed = open_feed("synthetic:cifar10:256", None, device=torch.device("cuda"), mode="memory")
    again = open_feed("synthetic:cifar10:256", None, device=torch.device("cuda"), mode="memory")
    assert feed.data.train_x.is_cuda and feed.data.train_x is again.data.train_x  # type: ignore[attr-defined]
    images, labels = next(iter(feed.train_batches(torch.randperm(256), 64)))
    assert images.is_cuda and images.dtype == torch.uint8 and labels.is_cuda
