"""The init trick (autotrick.tricks.init) against its formulas, with real torch."""

import copy
import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import one_thread, said, small_cnn  # noqa: F401  (one_thread: autouse)
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from autotrick.errors import ConfigError
from autotrick.tricks.init import initialize
from autotrick.tricks.norm import is_norm

LEAKY_GAIN = math.sqrt(2 / (1 + 0.01**2))
# N(0, s^2) cut at ±2 s keeps a std of s * sqrt(1 - 2 * 2 * phi(2) / (2 * Phi(2) - 1)) = 0.88 s.
TRUNC_FACTOR = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


def expected_std(scheme: str, fan_in: int, fan_out: int, **options: object) -> float:
    """The weight std each scheme's formula gives (module docstring of autotrick.tricks.init)."""
    if scheme.startswith("xavier"):
        return math.sqrt(2 / (fan_in + fan_out))
    if scheme.startswith("kaiming"):
        gain = LEAKY_GAIN if options["nonlinearity"] == "leaky_relu" else math.sqrt(2)
        return gain / math.sqrt(fan_in if options["mode"] == "fan_in" else fan_out)
    assert scheme == "trunc_normal"
    return float(options["std"]) * TRUNC_FACTOR  # type: ignore[arg-type]


# (layer, fan_in, fan_out): 131k and 74k weights, so the empirical std is within 0.3% of the true one.
LAYERS = {"linear": (lambda: nn.Linear(512, 256), 512, 256),
          "conv": (lambda: nn.Conv2d(64, 128, 3), 64 * 9, 128 * 9)}
STD_CASES = [
    ("xavier_uniform", {}), ("xavier_normal", {}),
    *[(s, {"mode": m, "nonlinearity": n}) for s in ("kaiming_uniform", "kaiming_normal")
      for m in ("fan_in", "fan_out") for n in ("relu", "leaky_relu")],
    ("trunc_normal", {"std": 0.02}), ("trunc_normal", {"std": 0.1}),
]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize(("scheme", "options"), STD_CASES)
def test_weight_std_follows_the_formula(layer: str, scheme: str, options: dict[str, object]) -> None:
    torch.manual_seed(0)
    build, fan_in, fan_out = LAYERS[layer]
    module = initialize(build(), scheme=scheme, **options)  # type: ignore[arg-type]
    defaults = {"mode": "fan_in", "nonlinearity": "relu", "std": 0.02}
    assert module.weight.std().item() == pytest.approx(expected_std(scheme, fan_in, fan_out,
                                                                    **(defaults | options)), rel=0.03)
    assert module.weight.mean().abs().item() < 0.02 * module.weight.std().item()
    assert torch.count_nonzero(module.bias) == 0


def test_trunc_normal_is_cut_at_two_std() -> None:
    weight = initialize(nn.Linear(512, 256), scheme="trunc_normal", std=0.05).weight
    assert weight.abs().max().item() <= 2 * 0.05


@pytest.mark.parametrize("layer", LAYERS)
def test_orthogonal_rows_are_orthonormal(layer: str) -> None:
    weight = initialize(LAYERS[layer][0](), scheme="orthogonal").weight.detach().flatten(1)
    assert weight.shape[0] <= weight.shape[1]  # more columns than rows: W W^T is the identity
    torch.testing.assert_close(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-4, rtol=0)


def test_norms_reset_for_a_scheme_and_untouched_by_default() -> None:
    model = small_cnn()
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[1].bias.fill_(2.0)
    before = copy.deepcopy(model.state_dict())
    initialize(model, scheme="default")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    initialize(model, scheme="xavier_normal")
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)
    assert not torch.equal(model[0].weight, before["0.weight"])


def test_zero_last_norm_makes_every_resnet_block_its_shortcut() -> None:
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initialize(model, torch.randn(2, 3, 32, 32), scheme="default", zero_last_norm=True)
    assert "zeroed the norm closing 8 residual branches: layer1.0.bn2, layer1.1.bn2" in said(caught)
    model.eval()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    with torch.no_grad():
        for block in blocks:
            assert torch.count_nonzero(block.bn2.weight) == 0
            assert torch.count_nonzero(block.bn1.weight) > 0
            assert block.downsample is None or torch.count_nonzero(block.downsample[1].weight) > 0
            x = torch.randn(2, block.conv1.in_channels, 8, 8)
            shortcut = x if block.downsample is None else block.downsample(x)
            torch.testing.assert_close(block(x), F.relu(shortcut))
    assert torch.count_nonzero(model.bn1.weight) > 0  # the stem's norm feeds every skip


class PreNormBlock(nn.Module):
    """x + mlp(norm(x)), the MLP without biases: zeroing the norm silences the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16, bias=False), nn.GELU(), nn.Linear(16, 8, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class NormThenResidual(nn.Module):
    """y = norm(x); y + f(y): no skip around the norm, whose zero would make y + f(y) constant."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = nn.BatchNorm1d(8), nn.Linear(8, 8, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x)
        return y + self.fc(y)


class GatedBranch(nn.Module):
    """x + sigmoid(norm(x)): the branch is not 0 when the norm is, so nothing to zero."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.sigmoid(self.norm(x))


@pytest.mark.parametrize(("build", "zeroed"), [
    (lambda: nn.Sequential(nn.Linear(8, 8), PreNormBlock(), PreNormBlock(), nn.Linear(8, 3)), ["1.norm", "2.norm"]),
    (lambda: nn.Sequential(nn.Linear(8, 8), NormThenResidual(), nn.Linear(8, 3)), []),
    (lambda: nn.Sequential(nn.Linear(8, 8), GatedBranch(), nn.Linear(8, 3)), []),
    (lambda: nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)), []),  # no skip at all
])
def test_zero_last_norm_acts_only_where_a_skip_remains(build: Callable[[], nn.Module], zeroed: list[str]) -> None:
    torch.manual_seed(0)
    model = build()
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        initialize(model, x, scheme="default", zero_last_norm=True)
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.LayerNorm | nn.BatchNorm1d)}
    assert [name for name, m in norms.items() if not torch.any(m.weight)] == zeroed
    if not zeroed:
        assert "nothing zeroed" in said(caught)
    out = model.eval()(x)
    assert (out - out[:1]).abs().max() > 1e-3  # the output still depends on the input


def test_zero_last_norm_needs_an_example() -> None:
    with pytest.raises(ConfigError, match="example"):
        initialize(small_cnn(), scheme="default", zero_last_norm=True)


def test_zero_last_norm_leaves_blocks_without_a_skip_alone_in_mobilevit_v2() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilevitv2_050", pretrained=False, num_classes=10)
    initialize(model, torch.randn(2, 3, 32, 32), scheme="default", zero_last_norm=True)
    zeroed = [name for name, m in model.named_modules() if is_norm(m) and not torch.any(m.weight)]
    # a MobileViT-v2 block (conv_kxk, conv_1x1, transformer, conv_proj) has no skip around it
    assert zeroed and not any(".conv_proj." in name or ".conv_kxk." in name for name in zeroed), zeroed
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert (out[0] - out[1]).abs().max() > 1e-6
