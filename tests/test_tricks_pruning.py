"""Pruning (tricks/pruning.py): magnitude pruning to a ratio, gradual pruning on its cubic ramp, structured
pruning, and a pruned model kept pruned through later steps; against their formulas and measured, with
real torch."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import convnet
from torch import Tensor, nn

from autotrick.apply import apply_tricks, prepare_trained
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks.pruning import (
    gradual_sparsity,
    inference_ms,
    keep_pruned,
    make_pruning_permanent,
    measure_sparsity,
    prune_channels,
    prune_weights,
)
from autotrick.tricks.reparam import remove_reparametrizations, reparametrize

torch.set_num_threads(2)


# --- magnitude pruning to a ratio -------------------------------------------------------------------------------------


def prunable_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    optimizer.zero_grad()
    F.cross_entropy(model(x), labels).backward()
    optimizer.step()


def conv_linear_weights(model: nn.Module) -> list[Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.9])
def test_pruned_model_has_the_requested_sparsity(ratio: float) -> None:
    model = prunable_net()
    assert measure_sparsity(model).sparsity == 0
    prune_weights(model, ratio=ratio)
    sparsity = measure_sparsity(model)
    assert sparsity.sparsity == pytest.approx(ratio, abs=0.01)
    weights = sum(w.numel() for w in conv_linear_weights(model))
    assert sparsity.total_params == sum(p.numel() for p in prunable_net().parameters())
    assert sparsity.nonzero_params == pytest.approx(sparsity.total_params - ratio * weights, abs=2)


def test_zeros_stay_zero_while_finetuning_and_after_removal() -> None:
    model = prunable_net()
    prune_weights(model, ratio=0.5)
    zeros = [w == 0 for w in conv_linear_weights(model)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        train_step(model, optimizer)
    masked = measure_sparsity(model)
    assert masked.sparsity == pytest.approx(0.5, abs=0.01)
    make_pruning_permanent(model)
    assert not any(name.endswith(("_orig", "_mask")) for name in model.state_dict())
    assert all(torch.all(w[z] == 0) for w, z in zip(conv_linear_weights(model), zeros, strict=True))
    assert measure_sparsity(model) == masked
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1))  # a plain model again


def test_ratio_zero_and_removal_on_an_unpruned_model_do_nothing() -> None:
    model = prunable_net()
    before = copy.deepcopy(model.state_dict())
    prune_weights(model, ratio=0.0)
    make_pruning_permanent(model)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- gradual pruning -----------------------------------------------------------------------------


def test_gradual_sparsity_follows_the_cubic_ramp() -> None:
    # 8 epochs, the ramp from epoch 2 (t0) to epoch 6 (t0 + n dt): s_t = s_f (1 - (1 - (t - 2) / 4)^3)
    expected = [0.0, 0.0, 0.0] + [0.8 * (1 - (1 - k / 4) ** 3) for k in (1, 2, 3)] + [0.8, 0.8]
    got = [gradual_sparsity(t, epochs=8, ratio=0.8, gradual_start=0.25, gradual_end=0.75) for t in range(8)]
    assert got == pytest.approx(expected)


def test_gradual_pruning_hits_the_target_sparsity_at_the_stated_epoch() -> None:
    values = resolve_values({"prune.ratio": 0.8, "prune.schedule": "gradual", "prune.gradual_start": 0.25,
                             "prune.gradual_end": 0.75}, "test")
    setup = apply_tricks(values, convnet(), num_classes=10, steps_per_epoch=1, epochs=8)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    seen = []
    for epoch in range(8):
        setup.on_epoch_start(epoch)
        seen.append(measure_sparsity(setup.model).sparsity)
        setup.step(setup.loss(setup.model(x), setup.targets(y)))  # the masks hold through the step
        assert measure_sparsity(setup.model).sparsity == pytest.approx(seen[-1])
    expected = [gradual_sparsity(t, epochs=8, ratio=0.8, gradual_start=0.25, gradual_end=0.75) for t in range(8)]
    assert seen == pytest.approx(expected, abs=0.005)
    assert seen[6] == pytest.approx(0.8, abs=0.005) and seen[5] < 0.8


def test_a_gradually_pruned_trial_reports_the_target_sparsity() -> None:
    values = resolve_values({"prune.ratio": 0.7, "prune.schedule": "gradual"}, "test")
    result = run_trial(values, TrainConfig(epochs=3, batch_size=128, threads=1))
    assert result.measurements["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert result.val_accuracy > 0.5


def test_a_reparametrized_trial_measures_the_same_plain_model_before_and_after_pruning() -> None:
    """Weight norm's g and v are folded before the dense model is counted and timed, as pruning
    folds them: unstructured pruning zeroes weights, so the count stays the same."""
    values = resolve_values({"reparam.type": "weight_norm", "prune.ratio": 0.5}, "test")
    result = run_trial(values, TrainConfig(epochs=1, batch_size=128, threads=1))
    assert result.measurements["params_dense"] == result.measurements["params"]


# --- a pruned model stays pruned -----------------------------------------------------------------


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def users_finetuning(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        loss = F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.arange(8) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_a_pruned_model_stays_pruned_through_later_optimizer_steps() -> None:
    setup = apply_tricks(resolve_values({"prune.ratio": 0.6}, "test"), convnet(), num_classes=10,
                         steps_per_epoch=1, epochs=1)
    setup.prune()
    assert setup.finish_pruning().sparsity == pytest.approx(0.6, abs=0.01)
    pruned = [w == 0 for w in weights(setup.model)]
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    for _ in range(3):  # the setup's own optimizer: the zeros are kept already
        setup.step(setup.loss(setup.model(x), setup.targets(y)))
    assert all((w[z] == 0).all() for w, z in zip(weights(setup.model), pruned, strict=True))

    # a fine-tuning of the user's own, with momentum and weight decay: one step revives every zero...
    revived = copy.deepcopy(setup.model)
    users_finetuning(revived, torch.optim.SGD(revived.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4), 1)
    assert measure_sparsity(revived).sparsity < 0.01
    # ...unless keep_pruned holds them, with one call
    kept = copy.deepcopy(setup.model)
    optimizer = torch.optim.SGD(kept.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    handle = keep_pruned(kept, optimizer)
    users_finetuning(kept, optimizer)
    assert measure_sparsity(kept).sparsity == pytest.approx(0.6, abs=0.01)
    assert all((w[z] == 0).all() for w, z in zip(weights(kept), pruned, strict=True))
    handle.remove()
    users_finetuning(kept, optimizer, 1)
    assert measure_sparsity(kept).sparsity < 0.01


# --- structured pruning --------------------------------------------------------------------------


def test_a_structured_pruned_resnet18_is_smaller_and_faster_on_the_cpu() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    dense = copy.deepcopy(model)
    x = torch.randn(16, 3, 32, 32)
    prune_channels(model, ratio=0.5, example_inputs=x[:2], keep=[model.fc])
    params = [sum(p.numel() for p in m.parameters()) for m in (dense, model)]
    assert params[1] < 0.3 * params[0]  # half the channels of each conv: about a quarter of the weights
    assert model.conv1.out_channels == 32 and model.fc.out_features == 10
    # measured, interleaved, the best of 3 medians each (other processes share the CPU)
    times = {"dense": [], "pruned": []}
    for _ in range(3):
        times["dense"].append(inference_ms(dense, x))
        times["pruned"].append(inference_ms(model, x))
    assert min(times["pruned"]) < 0.8 * min(times["dense"]), times


def test_structured_pruning_in_training_rebuilds_the_optimizer_and_the_shape_can_be_rebuilt() -> None:
    values = resolve_values({"prune.ratio": 0.5, "prune.structured": True, "schedule.name": "cosine",
                             "optim.no_decay_bias_norm": True}, "test")
    setup = apply_tricks(values, convnet(), num_classes=10, steps_per_epoch=4, epochs=2)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    for _ in range(5):
        setup.step(setup.loss(setup.model(x), setup.targets(y)))
    lr = setup.lr
    setup.prune(example_inputs=x[:2])
    assert setup.model[0].out_channels == 8 and setup.model[3].in_channels == 8
    optimized = {id(p) for g in setup.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in setup.model.parameters()}
    assert setup.lr == pytest.approx(lr)  # the schedule goes on from step 5
    setup.step(setup.loss(setup.model(x), setup.targets(y)))
    setup.finish_pruning()
    rebuilt = prepare_trained(convnet(), values, example_inputs=x[:2])
    rebuilt.load_state_dict(setup.model.state_dict())


def test_unstructured_pruning_is_untouched_by_a_reparametrization() -> None:
    model = reparametrize(convnet(), type="spectral_norm")
    remove_reparametrizations(model)
    prune_weights(model, ratio=0.5)
    assert measure_sparsity(model).sparsity == pytest.approx(0.5, abs=0.01)


REBUILT = {  # model-side tricks whose structure depends on how the model runs, on the models that show it
    "resnet18, zero_last_norm and dropout": ("resnet18", {"init.zero_last_norm": True, "dropout.p": 0.2}),
    "vit, instance norm": ("vit_b_16", {"norm.type": "instance"}),
    "squeezenet (a conv classifier), structured pruning": ("squeezenet1_1", {"prune.ratio": 0.5,
                                                                             "prune.structured": True}),
}


@pytest.mark.parametrize("case", list(REBUILT))
def test_a_checkpoint_loads_back_into_the_structure_its_tricks_gave(case: str, tmp_path: Path) -> None:
    """The rebuild sees the model run, as training did: the norm swap and dropout place what they
    placed, structured pruning keeps the classifier's outputs even when it is a conv, and
    zero_last_norm (which needs the model to run) does not stop the rebuild."""
    from autotrick.checkpoint import load_checkpoint, save_checkpoint
    from autotrick.models import build_model

    arch, tricks = REBUILT[case]
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, image_size=(32, 32))
    x = torch.randn(2, 3, 32, 32)
    setup = apply_tricks(resolve_values(tricks, "test"), model, num_classes=10, steps_per_epoch=1, epochs=1,
                         example=x)
    if tricks.get("prune.structured"):
        setup.prune(example_inputs=x)
        setup.finish_pruning()
    trained = setup.export().eval()
    assert trained(x).shape == (2, 10)
    path = save_checkpoint(tmp_path / "c.pt", trained, spec=arch, tricks=setup.values, num_classes=10,
                           input_shape=(3, 32, 32))
    torch.testing.assert_close(load_checkpoint(path)(x), trained(x))
