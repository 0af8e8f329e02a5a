"""Batch renormalization (tricks/batch_renorm.py), against its formulas, with real torch."""

import copy

import pytest
import torch
import torchvision
from helpers import convnet
from torch import nn

from autotrick.apply import apply_tricks
from autotrick.space import resolve_values
from autotrick.tricks.batch_renorm import BatchRenorm1d, BatchRenorm2d, renorm_limits, set_renorm_limits
from autotrick.tricks.norm import swap_norms

torch.set_num_threads(2)


def test_batch_renorm_is_batch_norm_while_r_and_d_are_clipped_to_1_and_0() -> None:
    torch.manual_seed(0)
    bn, brn = nn.BatchNorm2d(6), BatchRenorm2d(6)
    with torch.no_grad():
        for norm in (bn, brn):
            norm.weight.copy_(torch.linspace(0.5, 2, 6))
            norm.bias.copy_(torch.linspace(-1, 1, 6))
    for _ in range(3):  # r_max = 1, d_max = 0: the layer's state until the ramp starts
        x = (torch.randn(8, 6, 5, 5) * 3 + 2).requires_grad_()
        y_bn, y_brn = bn(x), brn(x)
        torch.testing.assert_close(y_brn, y_bn, atol=1e-5, rtol=1e-5)
        grad_bn, = torch.autograd.grad(y_bn.square().sum(), x)
        grad_brn, = torch.autograd.grad(y_brn.square().sum(), x)
        torch.testing.assert_close(grad_brn, grad_bn, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(brn.running_mean, bn.running_mean)
    torch.testing.assert_close(brn.running_var, bn.running_var)
    x = torch.randn(4, 6, 5, 5)
    torch.testing.assert_close(brn.eval()(x), bn.eval()(x))


def test_unclipped_batch_renorm_trains_with_the_running_statistics() -> None:
    torch.manual_seed(0)
    brn = BatchRenorm1d(4)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
        brn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 9.0]))
        brn.weight.fill_(1.5)
        brn.bias.fill_(0.1)
    set_renorm_limits(brn, r_max=1e6, d_max=1e6)
    mean, var = brn.running_mean.clone(), brn.running_var.clone()
    x = torch.randn(16, 4) * 2 + 3  # far from the running statistics
    expected = 1.5 * (x - mean) / (var + brn.eps).sqrt() + 0.1
    torch.testing.assert_close(brn.train()(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(brn.running_mean, mean)  # still updated as BatchNorm's


def test_the_renorm_limits_ramp_over_training() -> None:
    assert renorm_limits(0.0) == (1.0, 0.0) and renorm_limits(0.05) == (1.0, 0.0)
    assert renorm_limits(0.15) == pytest.approx((1 + 2 * 0.5, 5.0))
    assert renorm_limits(0.25) == (3.0, 5.0) and renorm_limits(1.0) == (3.0, 5.0)
    values = resolve_values({"norm.type": "batch_renorm"}, "test")
    setup = apply_tricks(values, convnet(), num_classes=10, steps_per_epoch=1, epochs=10)
    norm = setup.model[1]
    assert isinstance(norm, BatchRenorm2d) and (norm.r_max, norm.d_max) == (1.0, 0.0)
    setup.on_epoch_start(2)
    assert (norm.r_max, norm.d_max) == pytest.approx(renorm_limits(0.2))


def test_the_norm_swap_builds_batch_renorm_everywhere() -> None:
    model = swap_norms(torchvision.models.resnet18(weights=None, num_classes=10), type="batch_renorm")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20 and all(isinstance(m, BatchRenorm2d) for m in norms)
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_batch_renorm_starts_from_the_batch_norms_it_replaces() -> None:
    """Fine-tuning a pretrained model with norm.type=batch_renorm keeps its norms' learnt affine
    weights and running statistics."""
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    with torch.no_grad():
        model.bn1.weight.fill_(2.0), model.bn1.running_mean.fill_(0.5), model.bn1.running_var.fill_(3.0)
    swapped = swap_norms(copy.deepcopy(model), type="batch_renorm")
    assert isinstance(swapped.bn1, BatchRenorm2d)
    for name, tensor in model.bn1.state_dict().items():
        torch.testing.assert_close(swapped.bn1.state_dict()[name], tensor)
