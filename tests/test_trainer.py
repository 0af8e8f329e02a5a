"""The trainer: one real trial on the embedded digits data set (real torch, nothing mocked)."""

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

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


# --- no host sync in the training step ---------------------------------------------------------

HOST_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist"}


class HostReads(TorchFunctionMode):
    """Records every Python-level read of a tensor's value (what waits for a GPU's queue to drain)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in HOST_READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


# Every trick that acts inside the step and draws nothing on the host (mixup and cutmix draw their
# lambda and box from a CPU generator: host values by design, never a device read); SGD, whose
# update has no step counter (Adam's lives on the CPU and is read with .item(), which is no sync
# either: the CUDA test below covers AdamW and mixing).
STEP_TRICKS = {"smoothing.eps": 0.1, "clip.max_norm": 1.0, "optim.l1": 1e-5, "optim.nesterov": True,
               "optim.weight_decay": 1e-4, "schedule.name": "cosine", "schedule.warmup_epochs": 0.5}


@pytest.mark.parametrize("data", ["digits", "stream"])
def test_the_step_reads_nothing_back_from_the_device(data: str, tmp_path: Path) -> None:
    """An epoch at batch 128 and one at batch 32 (digits: 12 steps and 45) read tensors back the
    same number of times: per trial and per epoch, never per step."""
    config = TrainConfig(epochs=1, threads=1)
    if data == "stream":
        root = tmp_path / "pngs"
        for split, n in (("train", 720), ("val", 60)):
            for label in range(3):
                (root / split / f"c{label}").mkdir(parents=True)
                for i in range(n // 3):
                    Image.new("RGB", (8, 8), (80 * label, i % 255, 0)).save(root / split / f"c{label}" / f"{i}.png")
        config = replace(config, data=f"imagefolder:{root}", data_mode="stream")
    values = resolve_values(STEP_TRICKS, "test")
    run_trial(values, replace(config, batch_size=128))  # loads and caches the data set outside the count
    reads = {}
    for batch_size in (128, 32):
        with HostReads() as mode:
            result = run_trial(values, replace(config, batch_size=batch_size))
        assert result.outcome == "finished"
        reads[batch_size] = mode.calls
    # The same reads at 12 steps as at 45: none per step. Per trial: the one-batch model check
    # before the first epoch (diagnose.check_model: whether the output depends on the input, and so
    # on) and the epoch's (the summed loss, the evaluation; streamed, the order and a worker seed).
    assert reads[32] == reads[128] and len(reads[32]) <= 12, reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_cuda_epoch_runs_without_a_host_sync(precision: str) -> None:
    """torch's own sync detector raises on any synchronizing call (a .item(), a blocking copy) in
    the training steps of an epoch: mixing, AdamW (fused on CUDA: fp16's grad scaler then skips
    inf steps on the device), clipping, smoothing, L1, on resnet18 in channels_last."""
    from autotrick.apply import apply_tricks
    from autotrick.data import open_feed
    from autotrick.models import build_model
    from autotrick.trainer import train_steps

    data = open_feed("synthetic:cifar10:2048", None, device=torch.device("cuda"), mode="memory")
    values = resolve_values({**STEP_TRICKS, "optim.name": "adamw", "mix.mixup_alpha": 0.2,
                             "mix.cutmix_alpha": 1.0, "precision.dtype": precision}, "test")
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=(32, 32))
    setup = apply_tricks(values, model, num_classes=10, steps_per_epoch=8, epochs=2, device="cuda")
    setup.model = setup.model.to(memory_format=torch.channels_last)
    order = torch.randperm(2048, generator=setup.generator)
    train_steps(setup, data, data.train_batches(order, 256), channels_last=True)  # warm-up: cuDNN, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        total, seen = train_steps(setup, data, data.train_batches(order, 256), channels_last=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seen == 2048 and math.isfinite(float(total))


@pytest.mark.parametrize(("data", "calls"), [("digits", 1), ("synthetic:cifar10:1024", 4)])
def test_small_images_are_augmented_a_block_at_a_time_and_stay_with_their_labels(data: str, calls: int) -> None:
    """A digits epoch (23 batches of 64 images of 64 bytes) goes through the policy in one call; a
    CIFAR batch of 256 (768 KB) in a call of its own. Each batch keeps its own images and labels."""
    from autotrick.apply import apply_tricks
    from autotrick.data import open_feed
    from autotrick.models import build_model
    from autotrick.trainer import _augmented

    feed = open_feed(data, None, device=torch.device("cpu"), mode="memory")
    feed = replace(feed, data=replace(feed.data, crop_padding=0, flip=False))  # the policy only
    c, (h, w) = feed.size.in_channels, feed.size.image_size
    model = build_model("cnn", num_classes=10, in_channels=c, image_size=(h, w))
    setup = apply_tricks(resolve_values({}, "test"), model, num_classes=10, steps_per_epoch=1, epochs=1)
    seen: list[int] = []

    def policy(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # counts its calls, changes nothing
        seen.append(len(images))
        return images.clone()

    setup.train_transform = policy  # type: ignore[assignment]
    order = torch.randperm(feed.size.train_count)
    batch_size = 64 if data == "digits" else 256
    pairs = list(zip(feed.train_batches(order, batch_size), _augmented(feed.train_batches(order, batch_size),
                                                                       setup, feed), strict=True))
    assert len(seen) == calls and sum(seen) == feed.size.train_count
    assert all(torch.equal(x, images) and torch.equal(y, labels) for (images, labels), (x, y) in pairs)
