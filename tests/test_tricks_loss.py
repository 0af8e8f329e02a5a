"""The focal loss (tricks/loss.py) against its formula, on hard, smoothed and mixed targets (real torch)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotrick.apply import apply_tricks
from autotrick.errors import ConfigError
from autotrick.space import resolve_values
from autotrick.tricks.loss import class_weights, focal_loss
from autotrick.tricks.mixing import mix_batch
from autotrick.tricks.smoothing import soft_cross_entropy, soft_targets

torch.set_num_threads(2)


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
