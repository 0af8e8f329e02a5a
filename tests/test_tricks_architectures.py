"""Every model-side trick value on five torchvision architectures: the model must still run
forward and backward, on a batch of 2 images of 32x32 (ViT is built for that size).

Each case applies one value of every model-side trick, in the order training does (norm, dropout,
init, then pruning after training), so that 8 cases per architecture cover each norm type, each
init scheme (zero_last_norm on), dropout and pruning, and how they combine.
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from autotrick.params import Trick, Value
from autotrick.tricks.dropout import DROPOUT, set_dropout
from autotrick.tricks.init import INIT, SCHEMES, initialize
from autotrick.tricks.norm import NORM, NORM_LAYERS, NORM_TYPES, swap_norms
from autotrick.tricks.pruning import measure_sparsity, prune_weights

torch.set_num_threads(2)

ARCHITECTURES: dict[str, dict[str, int]] = {
    "resnet18": {}, "mobilenet_v3_small": {}, "efficientnet_b0": {}, "convnext_tiny": {},
    "vit_b_16": {"image_size": 32},
}
# (norm type, init scheme, dropout p, pruning ratio)
CASES: list[tuple[str, str, float | None, float]] = [
    ("batch", "xavier_uniform", 0.3, 0.0),
    ("group", "xavier_normal", None, 0.0),
    ("layer", "kaiming_uniform", None, 0.0),
    ("none", "kaiming_normal", None, 0.0),
    ("keep", "orthogonal", None, 0.0),
    ("keep", "trunc_normal", None, 0.5),
    ("instance", "default", None, 0.0),
    ("batch_renorm", "default", None, 0.0),
]
# ConvNeXt's head normalizes the pooled (N, C, 1, 1) map: instance norm has one position there.
NOT_APPLICABLE = {("convnext_tiny", "instance")}


def test_the_cases_cover_every_value() -> None:
    norms, schemes, dropouts, ratios = zip(*CASES, strict=True)
    assert set(norms) == set(NORM_TYPES) and set(schemes) == set(SCHEMES)
    assert any(dropouts) and any(ratios)


@functools.cache
def pristine(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None, num_classes=10, **ARCHITECTURES[arch])


def values(trick: Trick, **chosen: Value) -> dict[str, Value]:
    """Every parameter of `trick` at its default but the `chosen` ones, as the trainer passes them."""
    return {p.name: p.default for p in trick.params} | chosen


def image_size(arch: str, norm: str) -> int:
    """32, but a stride-32 CNN ends on a 1x1 map there, where instance norm has a single position
    per channel: 64 leaves it 2x2."""
    return 64 if norm == "instance" and arch != "vit_b_16" else 32


def forward_backward(model: nn.Module, size: int) -> None:
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def cases() -> list[object]:
    """One test per architecture and case, named e.g. resnet18-keep-trunc_normal-prune0.5."""
    out = []
    for arch in ARCHITECTURES:
        for norm, scheme, p, ratio in CASES:
            parts = (arch, norm, scheme, p and f"dropout{p}", ratio and f"prune{ratio}")
            out.append(pytest.param(arch, norm, scheme, p, ratio, id="-".join(str(s) for s in parts if s)))
    return out


@pytest.mark.parametrize(("arch", "norm", "scheme", "p", "ratio"), cases())
def test_tricks_run_forward_and_backward(arch: str, norm: str, scheme: str, p: float | None,
                                         ratio: float) -> None:
    model = swap_norms(copy.deepcopy(pristine(arch)), **values(NORM, type=norm))
    model = set_dropout(model, **values(DROPOUT, p=p))
    model = initialize(model, **values(INIT, scheme=scheme, zero_last_norm=True)).train()
    if norm == "none":
        assert not any(isinstance(m, NORM_LAYERS) for m in model.modules())
    size = image_size(arch, norm)
    if (arch, norm) in NOT_APPLICABLE:
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            forward_backward(model, size)
        return
    forward_backward(model, size)
    if ratio:  # as after training: prune, then finetune a step with the mask held
        prune_weights(model, ratio=ratio)
        torch.optim.SGD(model.parameters(), lr=0.01).step()
        forward_backward(model, size)
        assert measure_sparsity(model).sparsity == pytest.approx(ratio, abs=0.01)
