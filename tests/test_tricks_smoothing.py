"""Label smoothing (tricks/smoothing.py): soft targets and their cross-entropy against the formula and torch's."""

import math

import pytest
import torch
import torch.nn.functional as F

from autotrick.tricks.smoothing import soft_cross_entropy, soft_targets


def test_soft_targets_and_loss_by_hand() -> None:
    # K = 2, eps = 0.2: targets (0.1, 0.9); logits (0, ln 3) give softmax (1/4, 3/4).
    targets = soft_targets(torch.tensor([1]), num_classes=2, eps=0.2)
    assert targets.dtype == torch.float32
    assert targets[0].tolist() == pytest.approx([0.1, 0.9])
    loss = soft_cross_entropy(torch.tensor([[0.0, math.log(3)]]), targets)
    assert loss.item() == pytest.approx(-(0.1 * math.log(1 / 4) + 0.9 * math.log(3 / 4)))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_loss_equals_torch_label_smoothing(eps: float) -> None:
    logits, labels = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    expected = F.cross_entropy(logits, labels, label_smoothing=eps)
    assert soft_cross_entropy(logits, soft_targets(labels, 10, eps)).item() == pytest.approx(expected.item())


def test_smoothed_loss_is_float32_for_bf16_logits() -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    targets = soft_targets(torch.arange(8), 10, 0.1)
    loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(soft_cross_entropy(logits.float(), targets).item())
