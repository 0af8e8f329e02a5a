"""The optimizers (tricks/optim.py): parameter groups, weight decay and L1, every optimizer stepping, and LARS /
LAMB against their formulas, with real torch (nothing mocked)."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autotrick.tricks.optim import OPTIMIZERS, build_optimizer, l1_penalty

torch.set_num_threads(2)


def two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def one_step(name: str, **options: float) -> tuple[nn.Sequential, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                   dict[str, torch.Tensor]]:
    """The model, its parameters and gradients before one step of `name`, and the change made."""
    model = two_layers()
    optimizer = build_optimizer(model, name=name, **options)  # type: ignore[arg-type]
    F.cross_entropy(model(torch.randn(6, 4, generator=torch.Generator().manual_seed(1))),
                    torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return model, before, grads, {n: p.detach() - before[n] for n, p in model.named_parameters()}


ADAPTED = ("0.weight", "3.weight")  # the two layers' weights; their biases and the norm's are left out


def test_lars_gives_each_layer_its_trust_ratio_learning_rate() -> None:
    lr, wd, eta = 0.5, 0.01, 0.02
    _, w, g, step = one_step("lars", lr=lr, weight_decay=wd, trust_coef=eta, momentum=0.9)
    for name in w:
        update = g[name] + wd * w[name]
        trust = eta * w[name].norm() / (g[name].norm() + wd * w[name].norm()) if name in ADAPTED else 1.0
        torch.testing.assert_close(step[name], -lr * trust * update, rtol=1e-4, atol=1e-7)
    trusts = [eta * w[n].norm() / (g[n].norm() + wd * w[n].norm()) for n in ADAPTED]
    assert abs(float(trusts[0] - trusts[1])) > 1e-3  # each layer its own rate


def test_lamb_gives_each_layer_its_trust_ratio_learning_rate() -> None:
    lr, wd, eps = 0.01, 0.1, 1e-6
    _, w, g, step = one_step("lamb", lr=lr, weight_decay=wd)
    for name in w:
        # first step: the bias-corrected moments are g and g^2
        update = g[name] / (g[name].abs() + eps) + wd * w[name]
        trust = w[name].norm() / update.norm() if name in ADAPTED else 1.0
        torch.testing.assert_close(step[name], -lr * trust * update, rtol=1e-4, atol=1e-7)


def test_lars_and_lamb_exempt_biases_and_norms_by_group() -> None:
    model = two_layers()
    for name in ("lars", "lamb"):
        groups = build_optimizer(model, name=name, lr=0.1, weight_decay=0.01).param_groups
        adapted = {id(p) for g in groups if g["adapt"] for p in g["params"]}
        assert adapted == {id(model[0].weight), id(model[3].weight)}
        assert all(g["weight_decay"] == 0.01 for g in groups)  # no_decay_bias_norm is its own choice


def test_lars_momentum_carries_the_adapted_update() -> None:
    model = two_layers()
    optimizer = build_optimizer(model, name="lars", lr=0.1, momentum=0.9, trust_coef=0.01)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    buffers = []
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        w, g = model[0].weight.detach().clone(), model[0].weight.grad.clone()
        update = 0.01 * w.norm() / g.norm() * g
        buffers.append(update if not buffers else 0.9 * buffers[-1] + update)
        optimizer.step()
        torch.testing.assert_close(model[0].weight.detach(), w - 0.1 * buffers[-1], rtol=1e-5, atol=1e-8)


def small_convnet() -> nn.Sequential:
    frozen = nn.Linear(3, 3)
    frozen.requires_grad_(False)
    # LayerNorm over (C, H, W) has 3-d parameters: exempt for being a norm's, not for being 1-d.
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm([4, 6, 6]), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3), frozen)


def ids(params: list[Tensor]) -> set[int]:
    return {id(p) for p in params}


def test_no_decay_bias_norm_groups() -> None:
    model = small_convnet()
    conv, bn, ln, linear = model[0], model[1], model[2], model[5]
    optimizer = build_optimizer(model, name="sgd", lr=0.1, weight_decay=0.01, no_decay_bias_norm=True)
    by_decay = {g["weight_decay"]: ids(g["params"]) for g in optimizer.param_groups}
    assert by_decay == {
        0.01: ids([conv.weight, linear.weight]),
        0.0: ids([conv.bias, bn.weight, bn.bias, ln.weight, ln.bias, linear.bias]),
    }


def test_without_the_exemption_every_trainable_parameter_decays() -> None:
    model = small_convnet()
    (group,) = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05).param_groups
    assert group["weight_decay"] == 0.05
    assert ids(group["params"]) == ids([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name: str) -> None:
    torch.manual_seed(0)
    model = small_convnet()
    optimizer = build_optimizer(model, name=name, lr=0.01, weight_decay=1e-4, no_decay_bias_norm=True,
                                l1=1e-5)
    before = model[0].weight.detach().clone()
    model(torch.randn(4, 1, 8, 8)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)
    assert optimizer.param_groups[0]["lr"] == 0.01


def test_adam_is_l2_and_adamw_decoupled() -> None:
    model = nn.Linear(2, 2)
    assert type(build_optimizer(model, name="adam", lr=1e-3, weight_decay=0.1)) is torch.optim.Adam
    assert type(build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.1)) is torch.optim.AdamW


def test_nesterov_without_momentum_is_off() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), name="sgd", lr=0.1, momentum=0.0, nesterov=True)
    assert optimizer.param_groups[0]["nesterov"] is False
    optimizer = build_optimizer(nn.Linear(2, 2), name="sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert optimizer.param_groups[0]["nesterov"] is True


def test_l1_penalty_is_l1_times_the_sum_of_absolute_weights() -> None:
    model = small_convnet()
    conv, linear, frozen = model[0], model[5], model[6]
    expected = 1e-3 * sum(float(w.detach().abs().sum()) for w in (conv.weight, linear.weight, frozen.weight))
    penalty = l1_penalty(model, 1e-3)
    assert isinstance(penalty, Tensor) and penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    torch.testing.assert_close(conv.weight.grad, 1e-3 * conv.weight.sign())
    assert l1_penalty(model, 0.0) == 0.0
