"""Weight and spectral normalization, batch renormalization, gradual and structured pruning and
keeping a pruned model pruned, against their formulas and measured, with real torch."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from autotrick.apply import apply_tricks, prepare_trained
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial
from autotrick.tricks.batch_renorm import BatchRenorm1d, BatchRenorm2d, renorm_limits, set_renorm_limits
from autotrick.tricks.norm import swap_norms
from autotrick.tricks.pruning import (
    gradual_sparsity,
    inference_ms,
    keep_pruned,
    measure_sparsity,
    prune_channels,
    prune_weights,
)
from autotrick.tricks.reparam import remove_reparametrizations, reparametrize

torch.set_num_threads(2)


def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


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


# --- weight and spectral normalization -----------------------------------------------------------


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


# --- batch renormalization -----------------------------------------------------------------------


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
