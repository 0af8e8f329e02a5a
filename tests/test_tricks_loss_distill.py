"""Focal loss and knowledge distillation against their formulas, a student that learns from a
teacher, and the checkpoints a teacher is loaded from (real torch, nothing mocked)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotrick.apply import apply_tricks, prepare_model, prepare_trained
from autotrick.checkpoint import load_checkpoint, load_teacher, save_checkpoint
from autotrick.errors import ConfigError
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks.distill import distillation_loss
from autotrick.tricks.loss import class_weights, focal_loss
from autotrick.tricks.mixing import mix_batch
from autotrick.tricks.smoothing import soft_cross_entropy, soft_targets

torch.set_num_threads(2)

# --- focal loss ----------------------------------------------------------------------------------


def smoothed_mixed_targets(n: int = 16, k: int = 10) -> torch.Tensor:
    targets = soft_targets(torch.arange(n) % k, k, 0.1)
    _, mixed = mix_batch(torch.randn(n, 3, 8, 8), targets, mixup_alpha=0.4, cutmix_alpha=0.0,
                         generator=torch.Generator().manual_seed(0))
    return mixed


def test_focal_at_gamma_zero_is_cross_entropy_on_hard_and_soft_targets() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 10
    hard = soft_targets(labels, 10, 0.0)
    assert focal_loss(logits, hard, gamma=0.0).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    soft = smoothed_mixed_targets()  # smoothing then mixup: every row is soft
    assert (soft.max(dim=1).values < 1).all()
    assert focal_loss(logits, soft, gamma=0.0).item() == pytest.approx(soft_cross_entropy(logits, soft).item())


def test_focal_on_soft_targets_follows_the_formula() -> None:
    logits, targets = torch.randn(16, 10, generator=torch.Generator().manual_seed(1)), smoothed_mixed_targets()
    p = logits.softmax(dim=1)
    expected = -(targets * (1 - p) ** 2.5 * p.log()).sum(dim=1).mean()
    assert focal_loss(logits, targets, gamma=2.5).item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_down_weights_the_easy_examples() -> None:
    # two classes: the easy example is right with p = 0.95, the hard one with p = 0.3
    logits = torch.tensor([[math.log(0.95), math.log(0.05)], [math.log(0.3), math.log(0.7)]])
    targets = soft_targets(torch.tensor([0, 0]), 2, 0.0)
    ce = [soft_cross_entropy(logits[i:i + 1], targets[i:i + 1]).item() for i in range(2)]
    focal = [focal_loss(logits[i:i + 1], targets[i:i + 1], gamma=2.0).item() for i in range(2)]
    assert focal[0] / ce[0] == pytest.approx(0.05**2, rel=1e-4)  # (1 - p)^gamma
    assert focal[1] / ce[1] == pytest.approx(0.7**2, rel=1e-4)
    assert focal[0] / focal[1] < 0.01 * ce[0] / ce[1]  # the easy example's share shrinks 100-fold


def test_alpha_weighs_classes_by_inverse_frequency() -> None:
    weights = class_weights(torch.tensor([90, 10]), alpha=1.0)
    torch.testing.assert_close(weights, torch.tensor([0.2, 1.8]))  # 1/n_k, averaging 1
    torch.testing.assert_close(class_weights(torch.tensor([90, 10]), alpha=0.0), torch.ones(2))
    logits, targets = torch.randn(4, 2), soft_targets(torch.tensor([0, 1, 1, 0]), 2, 0.1)
    p = logits.softmax(dim=1)
    expected = -(weights * targets * (1 - p) ** 2 * p.log()).sum(dim=1).mean()
    assert focal_loss(logits, targets, gamma=2.0, alpha=weights).item() == pytest.approx(expected.item(), rel=1e-5)


def test_setup_loss_is_the_focal_loss_with_the_class_weights() -> None:
    values = resolve_values({"loss.name": "focal", "loss.gamma": 1.5, "loss.alpha": 0.5}, "test")
    with pytest.raises(ConfigError, match="pass class_counts="):
        apply_tricks(values, nn.Linear(4, 3), num_classes=3, steps_per_epoch=1, epochs=1)
    counts = torch.tensor([10, 30, 60])
    setup = apply_tricks(values, nn.Linear(4, 3), num_classes=3, steps_per_epoch=1, epochs=1, class_counts=counts)
    logits, targets = torch.randn(5, 3), soft_targets(torch.tensor([0, 1, 2, 2, 1]), 3, 0.0)
    expected = focal_loss(logits, targets, gamma=1.5, alpha=class_weights(counts, 0.5))
    assert setup.loss(logits, targets).item() == pytest.approx(expected.item())


# --- distillation --------------------------------------------------------------------------------


def test_distillation_loss_follows_the_formula() -> None:
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    task, t, alpha = torch.tensor(1.7), 3.0, 0.6
    p_t, p_s = (teacher / t).softmax(dim=1), (student / t).softmax(dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
    expected = alpha * t**2 * kl + (1 - alpha) * task
    assert distillation_loss(student, teacher, task, temperature=t, alpha=alpha).item() == pytest.approx(
        expected.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, task, temperature=t, alpha=alpha).item() == pytest.approx(
        (1 - alpha) * 1.7, abs=1e-6)


def kl_to_teacher(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return F.kl_div(student(x).log_softmax(1), teacher(x).log_softmax(1), log_target=True,
                        reduction="batchmean").item()


def test_a_distilled_student_moves_toward_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    values = resolve_values({"distill.teacher": "a-teacher-given-in-python", "distill.alpha": 1.0,
                             "distill.temperature": 2.0, "optim.name": "adamw", "optim.lr": 0.01}, "test")
    setup = apply_tricks(values, student, num_classes=4, steps_per_epoch=200, epochs=1, teacher=teacher)
    x = torch.randn(256, 6)
    labels = torch.randint(0, 4, (256,))  # random labels: alpha 1 ignores them, only the teacher teaches
    before = kl_to_teacher(setup.model, teacher, x)
    for _ in range(200):
        setup.step(setup.loss(setup.model(x), setup.targets(labels), inputs=x))
    after = kl_to_teacher(setup.model, teacher, x)
    assert after < 0.2 * before, (before, after)
    agree = (setup.model(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agree > 0.85
    with pytest.raises(ValueError, match="inputs=x"):
        setup.loss(setup.model(x), setup.targets(labels))


def small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))


@pytest.mark.parametrize("tricks", [{"norm.type": "group", "dropout.p": 0.2},
                                    {"prune.ratio": 0.5, "prune.structured": True}],
                         ids=["norm-swap-dropout", "structured-pruning"])
def test_a_checkpoint_rebuilds_the_trained_model(tmp_path: Path, tricks: dict) -> None:
    from autotrick.models import cnn

    torch.manual_seed(0)
    values = resolve_values(tricks, "test")
    model = prepare_trained(cnn(10, 1), values, example_inputs=torch.randn(2, 1, 8, 8)).eval()
    path = save_checkpoint(tmp_path / "teacher.pt", model, spec="cnn", tricks=values, num_classes=10,
                           input_shape=(1, 8, 8))
    loaded = load_checkpoint(path)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training
    teacher = load_teacher(str(path))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_references_that_cannot_load_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"distill.teacher .*nope.pt: no such file"):
        load_teacher(str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match=r"an MLflow reference; pass teacher=autotrick.load_model"):
        load_teacher("models:/digits-cnn@champion")
    plain = tmp_path / "plain.pt"
    torch.save(small_cnn().state_dict(), plain)
    with pytest.raises(ConfigError, match="a plain state dict names no model"):
        load_teacher(str(plain))


def test_a_trial_distils_from_a_checkpoint_file(tmp_path: Path) -> None:
    from autotrick.models import cnn

    torch.manual_seed(0)
    teacher = prepare_model(cnn(10, 1), {})
    path = save_checkpoint(tmp_path / "t.pt", teacher, spec="cnn", tricks={}, num_classes=10, input_shape=(1, 8, 8))
    values = resolve_values({"distill.teacher": str(path), "distill.temperature": 4.0}, "test")
    result = run_trial(values, TrainConfig(model="mlp", epochs=2, batch_size=128, threads=1))
    assert result.outcome == "finished" and result.val_accuracy > 0.5


def test_loading_a_teacher_leaves_the_trials_random_numbers_alone(tmp_path: Path) -> None:
    """A worker builds a teacher once and caches it: its first trial and its later ones train to
    the same numbers (dropout draws from the seeded generator after the teacher is loaded)."""
    from autotrick.models import cnn

    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "fresh.pt", prepare_model(cnn(10, 1), {}), spec="cnn", tricks={},
                           num_classes=10, input_shape=(1, 8, 8))
    values = resolve_values({"distill.teacher": str(path), "dropout.p": 0.3}, "test")
    config = TrainConfig(model="mlp", epochs=1, batch_size=128, threads=1)
    first, second = run_trial(values, config), run_trial(values, config)
    assert (first.val_loss, first.val_accuracy) == (second.val_loss, second.val_accuracy)
