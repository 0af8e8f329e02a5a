"""Weight and spectral normalization (tricks/reparam.py), against their formulas, with real torch."""

import pytest
import torch
import torch.nn.functional as F
from helpers import convnet
from torch import nn
from torch.nn.utils import parametrize

from autotrick.apply import prepare_trained
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks.reparam import remove_reparametrizations, reparametrize

torch.set_num_threads(2)


def train(model: nn.Module, steps: int, lr: float = 0.05) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=generator)
        loss = F.cross_entropy(model(x), torch.arange(8) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def sigma_max(weight: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(weight.detach().flatten(1), ord=2).item()


def test_spectral_norm_keeps_the_largest_singular_value_at_one_and_exports_plain() -> None:
    model = reparametrize(convnet(), type="spectral_norm")
    layers = [model[0], model[3], model[7]]
    assert all(parametrize.is_parametrized(layer, "weight") for layer in layers)
    assert [sigma_max(layer.parametrizations.weight.original) for layer in layers] != pytest.approx([1.0] * 3, abs=0.1)
    train(model, 30)
    model.eval()
    assert [sigma_max(layer.weight) for layer in layers] == pytest.approx([1.0] * 3, abs=0.05)
    x = torch.randn(4, 3, 8, 8)
    before = model(x)
    assert remove_reparametrizations(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(model.state_dict()) == set(convnet().state_dict())  # plain: conv.weight, not .original
    torch.testing.assert_close(model(x), before)


def test_weight_norm_starts_as_the_model_and_trains_g_and_v() -> None:
    plain, model = convnet().eval(), reparametrize(convnet(), type="weight_norm").eval()
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(model(x), plain(x))
    g = model[0].parametrizations.weight.original0
    torch.testing.assert_close(g.flatten(), plain[0].weight.flatten(1).norm(dim=1))  # g = ||w|| per channel
    names = {n for n, _ in model.named_parameters()}
    assert {"0.parametrizations.weight.original0", "0.parametrizations.weight.original1"} <= names


def test_a_trial_saves_the_reparametrized_model_in_plain_form() -> None:
    trained: list[nn.Module] = []
    values = resolve_values({"reparam.type": "weight_norm"}, "test")
    result = run_trial(values, TrainConfig(epochs=2, batch_size=128, threads=1), on_trained=trained.append)
    assert result.outcome == "finished" and result.val_accuracy > 0.5
    assert not any(parametrize.is_parametrized(m) for m in trained[0].modules())
    from autotrick.models import cnn

    prepare_trained(cnn(10, 1), values,
                    example_inputs=torch.zeros(2, 1, 8, 8)).load_state_dict(trained[0].state_dict())
