"""The trainer: one real trial on the embedded digits data set (real torch, nothing mocked)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from autotrick.space import resolve_values
from autotrick.trainer import EpochReport, TrainConfig, run_trial

FAST = TrainConfig(epochs=3, batch_size=128, threads=1)


def train(sets: dict, config: TrainConfig = FAST) -> tuple:
    reports: list[EpochReport] = []
    result = run_trial(resolve_values(sets, "test"), config, reports.append)
    return result, reports


def test_same_seed_same_numbers_on_the_cpu() -> None:
    sets = {"norm.type": "group", "smoothing.eps": 0.1, "mix.mixup_alpha": 0.2, "schedule.name": "cosine"}
    first, _ = train(sets)
    again, _ = train(sets)
    assert [r.train_loss for r in first.history] == [r.train_loss for r in again.history]
    assert first.val_accuracy == again.val_accuracy


def test_reports_every_epoch_and_the_last_carries_the_outcome() -> None:
    result, reports = train({})
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.outcome for r in reports] == [None, None, "finished"]
    assert all(r.images_per_s > 0 and r.seconds > 0 and r.lr == 0.05 for r in reports)
    assert result.outcome == "finished" and result.val_accuracy > 0.8


EXPLODING_MODEL = """
import torch.nn as nn

class Explode(nn.Module):
    def forward(self, x):
        return x * 1e38 * 1e38  # inf logits: the loss is not finite

def build(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes), Explode())
"""


def test_a_non_finite_loss_ends_the_trial_as_diverged_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "exploding.py").write_text(EXPLODING_MODEL)
    config = TrainConfig(model=f"{tmp_path / 'exploding.py'}:build", epochs=3, threads=1)
    result, reports = train({}, config)
    assert result.outcome == "diverged"
    assert "non-finite" in result.reason and f"epoch {result.epochs_run}" in result.reason
    assert reports[-1].outcome == "diverged" and math.isnan(reports[-1].train_loss)


def test_pruning_reports_the_measured_sparsity() -> None:
    trained: list = []  # on_trained hands over the model as the search saves it: pruned, permanent
    result = run_trial(resolve_values({"prune.ratio": 0.6, "prune.finetune_epochs": 1}, "test"), FAST,
                       on_trained=trained.append)
    assert len(trained) == 1
    assert result.measurements["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert result.measurements["nonzero_params"] < sum(p.numel() for p in trained[0].parameters())
    assert result.val_accuracy > 0.5


def test_early_stopping_ends_before_the_budget() -> None:
    result, reports = train({"early_stop.patience": 1, "optim.lr": 1e-7}, TrainConfig(epochs=10, threads=1))
    assert result.outcome == "patience_stopped" and result.epochs_run < 10
    assert reports[-1].outcome == "patience_stopped"


def test_warmup_is_stepped_every_iteration() -> None:
    _, reports = train({"schedule.warmup_epochs": 2.0}, TrainConfig(epochs=3, batch_size=128, threads=1))
    # 12 steps an epoch (1437 / 128), 24 of warmup: the lr for step k is peak * (k + 1) / 24, so
    # after epoch 1 (12 steps taken) it is 13/24 of the peak, after epoch 2 the peak itself
    assert reports[0].lr == pytest.approx(0.05 * 13 / 24)
    assert reports[1].lr == pytest.approx(0.05)
    # each report carries the lr of each of its optimizer steps, numbered over the run: the warmup
    steps = [pair for report in reports for pair in report.step_lrs]
    assert [step for step, _ in steps] == list(range(1, 37))
    assert [lr for _, lr in steps[:24]] == pytest.approx([0.05 * k / 24 for k in range(1, 25)])


def test_the_command_in_a_fresh_process_prints_everything_before_its_quick_exit(tmp_path: Path) -> None:
    """`python -m autotrick` ends with os._exit (no interpreter teardown): piped output must still be
    whole, and the exit code the command's."""
    done = subprocess.run([sys.executable, "-m", "autotrick", "train", "--epochs", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("train cnn on digits, 2 epochs") and len(lines) == 4, done.stdout
    assert lines[-1].startswith("finished: val_accuracy "), done.stdout
