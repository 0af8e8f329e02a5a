"""Knowledge distillation (tricks/distill.py) against its formula, a student that learns from a teacher, and
the checkpoints a teacher is loaded from (real torch, nothing mocked)."""

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

torch.set_num_threads(2)


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
