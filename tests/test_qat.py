"""quant.qat: the last epochs train through fake int8 quantization (weights per channel, inputs
per tensor), with the formulas of autotrick/tricks/quant.py, no read-back per step, and a model
exported plain with its weights on the int8 grid."""

from __future__ import annotations

from dataclasses import replace

import torch
from test_trainer import HostReads
from torch import nn

from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks.quant import MOMENTUM, FakeQuantInput, FakeQuantWeight, qat_active, start_qat, stop_qat


def test_weights_are_rounded_to_int8_per_output_channel() -> None:
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 5.0, 20.0]).view(4, 1, 1, 1)
    scale = w.abs().flatten(1).amax(1).view(4, 1, 1, 1) / 127
    expected = (w / scale).round().clamp(-128, 127) * scale
    torch.testing.assert_close(FakeQuantWeight()(w), expected)


def test_inputs_are_rounded_to_uint8_over_the_moving_range() -> None:
    quant = FakeQuantInput().train()
    first = torch.linspace(-1.0, 3.0, 50)
    quant(first)  # the first batch sets the range
    assert (quant.lo.item(), quant.hi.item()) == (-1.0, 3.0)
    quant(torch.linspace(-2.0, 5.0, 50))
    assert abs(quant.lo.item() - (-1.0 + MOMENTUM * (-2.0 + 1.0))) < 1e-6
    assert abs(quant.hi.item() - (3.0 + MOMENTUM * (5.0 - 3.0))) < 1e-6
    quant.eval()
    x = torch.randn(100)
    s = (quant.hi - quant.lo) / 255
    z = (-quant.lo / s).round()
    torch.testing.assert_close(quant(x), ((x / s).round() + z).clamp(0, 255).sub(z) * s)


def test_gradients_pass_straight_through_and_export_leaves_plain_int8_weights() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    weight = model[0].weight
    start_qat(model)
    assert qat_active(model)
    model(torch.randn(8, 1, 8, 8)).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert stop_qat(model) and not qat_active(model)
    assert model[0].weight is weight and not hasattr(model[0], "input_quant")  # the optimizer's parameter
    scale = weight.detach().abs().flatten(1).amax(1).view(4, 1, 1, 1) / 127
    grid = weight.detach() / scale
    assert (grid - grid.round()).abs().max() < 1e-3


def test_qat_trains_the_last_epochs_and_exports_a_plain_model() -> None:
    kept: list[nn.Module] = []
    config = TrainConfig(epochs=4, batch_size=64)
    result = run_trial(resolve_values({"quant.qat": 2}, "test"), config, on_trained=kept.append)
    assert result.outcome == "finished" and result.val_accuracy > 0.85
    model = kept[0]
    assert not qat_active(model) and not any("input_quant" in k for k in model.state_dict())
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def test_qat_reads_nothing_back_per_step() -> None:
    values = resolve_values({"quant.qat": 1}, "test")
    config = TrainConfig(epochs=1, threads=1)
    run_trial(values, replace(config, batch_size=128))  # data loaded and cached outside the count
    reads = {}
    for batch_size in (128, 32):
        with HostReads() as mode:
            run_trial(values, replace(config, batch_size=batch_size))
        reads[batch_size] = mode.calls
    assert reads[32] == reads[128], reads


def test_qat_composes_with_pruning_oneshot_gradual_and_structured() -> None:
    config = TrainConfig(epochs=3, batch_size=64)
    for prune in ({"prune.ratio": 0.5}, {"prune.ratio": 0.5, "prune.schedule": "gradual"},
                  {"prune.ratio": 0.5, "prune.structured": True}):
        kept: list[nn.Module] = []
        result = run_trial(resolve_values({"quant.qat": 2, **prune}, "test"), config, on_trained=kept.append)
        assert result.outcome == "finished", (prune, result.reason)
        assert not qat_active(kept[0])
