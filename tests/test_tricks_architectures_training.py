"""The training-side tricks of issue 13 on the five torchvision architectures the norm swap covers,
at 32x32 through the TrainingSetup a training loop uses: batch renorm, weight / spectral norm,
LARS / LAMB, focal loss, distillation, a frozen backbone with layer-wise lr decay, gradual and
structured pruning; then the model is exported plain and its saved weights load into a rebuild.

Two cases cover every trick and how they combine; each architecture runs one of them (resnet18
both), alternating, with one step of each epoch kind: together they stay under a minute.
"""

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from autotrick.apply import apply_tricks, prepare_trained
from autotrick.space import resolve_values
from autotrick.tricks.batch_renorm import BatchRenorm2d
from autotrick.tricks.pruning import measure_sparsity

torch.set_num_threads(2)

ARCHITECTURES: dict[str, dict[str, int]] = {
    "resnet18": {}, "mobilenet_v3_small": {}, "efficientnet_b0": {}, "convnext_tiny": {},
    "vit_b_16": {"image_size": 32},
}
CASES = {
    "renorm-weightnorm-lamb-focal-distill-finetune": {
        "norm.type": "batch_renorm", "reparam.type": "weight_norm", "optim.name": "lamb", "optim.lr": 1e-3,
        "loss.name": "focal", "loss.gamma": 2.0, "distill.teacher": "the pristine model", "distill.alpha": 0.5,
        "finetune.freeze_epochs": 1, "finetune.head_lr_mult": 3.0, "finetune.layer_decay": 0.8,
        "prune.ratio": 0.5, "prune.schedule": "gradual", "prune.gradual_end": 0.5},
    "spectralnorm-lars-structured": {
        "reparam.type": "spectral_norm", "optim.name": "lars", "optim.lr": 1.0, "optim.trust_coef": 0.01,
        "prune.ratio": 0.3, "prune.structured": True},
}


@functools.cache
def pristine(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None, num_classes=10, **ARCHITECTURES[arch])


A, B = CASES
RUNS = [("resnet18", A), ("resnet18", B), ("mobilenet_v3_small", A), ("efficientnet_b0", B), ("convnext_tiny", A),
        ("vit_b_16", B)]


def test_every_architecture_and_case_runs() -> None:
    assert {arch for arch, _ in RUNS} == set(ARCHITECTURES) and {case for _, case in RUNS} == set(CASES)


@pytest.mark.parametrize(("arch", "case"), RUNS, ids=[f"{arch}-{case}" for arch, case in RUNS])
def test_the_new_tricks_train_on_each_architecture(arch: str, case: str) -> None:
    values = resolve_values(CASES[case], "test")
    teacher = copy.deepcopy(pristine(arch)) if "distill.teacher" in CASES[case] else None  # it gets frozen
    setup = apply_tricks(values, copy.deepcopy(pristine(arch)), num_classes=10, steps_per_epoch=1, epochs=2,
                         teacher=teacher)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    params = sum(p.numel() for p in setup.model.parameters())

    def step() -> None:
        loss = setup.loss(setup.model(x), setup.targets(y), inputs=x)
        assert torch.isfinite(loss)
        setup.step(loss)
        assert all(torch.isfinite(p).all() for p in setup.model.parameters())

    for epoch in range(2):
        setup.on_epoch_start(epoch)
        step()
    if values.get("norm.type") == "batch_renorm" and arch != "vit_b_16":  # ViT has no norm over channels
        assert any(isinstance(m, BatchRenorm2d) for m in setup.model.modules())
    setup.prune(example_inputs=x)
    step()
    sparsity = setup.finish_pruning()
    if values.get("prune.structured"):
        assert sparsity.total_params < 0.9 * params
    else:
        assert sparsity.sparsity == pytest.approx(0.5, abs=0.01)
        assert measure_sparsity(setup.model).sparsity == pytest.approx(0.5, abs=0.01)
    model = setup.export()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    rebuilt = prepare_trained(copy.deepcopy(pristine(arch)), values, example_inputs=x)
    rebuilt.load_state_dict(model.state_dict())  # what a search saves loads into what it rebuilds
    # (equal NaNs: one step on a batch of 2 can leave a BatchNorm's running variance unusable at eval)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), equal_nan=True)
