"""Gradient clipping (tricks/clipping.py): the norm brought to max_norm, with real torch."""

import pytest
import torch
from torch import nn

from autotrick.tricks.clipping import clip_gradients


def grad_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])))


def test_clipping_brings_the_norm_to_max_norm() -> None:
    model = nn.Linear(4, 3)
    (100 * model(torch.ones(2, 4))).sum().backward()
    before = grad_norm(model)
    assert before > 1.0
    assert float(clip_gradients(model, 1.0)) == pytest.approx(before, rel=1e-5)
    assert grad_norm(model) == pytest.approx(1.0, rel=1e-4)
    assert float(clip_gradients(model, 10.0)) == pytest.approx(1.0, rel=1e-4)  # below the cap: unchanged
    assert grad_norm(model) == pytest.approx(1.0, rel=1e-4)
    assert clip_gradients(model, None) is None
