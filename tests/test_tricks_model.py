"""The model-side tricks (init, norm swap, dropout) against their formulas, with real torch (pruning:
test_tricks_pruning.py)."""

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.resnet import BasicBlock

from autotrick.errors import ConfigError, TrickNote
from autotrick.params import Trick
from autotrick.tricks.dropout import DROPOUT, set_dropout
from autotrick.tricks.init import INIT, initialize
from autotrick.tricks.norm import NORM, NORM_LAYERS, ChannelsLastNorm, NoNorm, is_norm, swap_norms
from autotrick.tricks.pruning import PRUNE, prune_weights

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: two OpenMP threads spin-waiting on a busy shared core run a small model
    several times slower (see test_tricks_architectures.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("trick", "apply", "not_model_side"), [
    (INIT, initialize, set()), (NORM, swap_norms, set()), (DROPOUT, set_dropout, set()),
    # the epochs and the schedule belong to the training loop; structured is another function
    (PRUNE, prune_weights, {"finetune_epochs", "structured", "schedule", "gradual_start", "gradual_end"}),
])
def test_keywords_are_the_trick_params(trick: Trick, apply: Callable[..., object],
                                       not_model_side: set[str]) -> None:
    keywords = {name for name, p in inspect.signature(apply).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == {p.name for p in trick.params} - not_model_side


# --- init ----------------------------------------------------------------------------------------

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


def small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


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


def said(caught: list[warnings.WarningMessage]) -> str:
    return " | ".join(str(w.message) for w in caught if issubclass(w.category, TrickNote))


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


# --- norm swap -----------------------------------------------------------------------------------


def test_group_norm_resnet_has_no_batch_norm_and_still_trains() -> None:
    torch.manual_seed(0)
    model = swap_norms(resnet18(weights=None, num_classes=10), type="group", groups=8)
    assert not any(isinstance(m, BATCH_NORMS) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 8 for m in model.modules()) == 20
    x, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize(("channels", "groups", "expected"),
                         [(24, 16, 12), (24, 8, 8), (10, 4, 2), (7, 8, 7), (3, 32, 3), (64, 32, 32)])
def test_group_count_falls_back_to_the_largest_divisor(channels: int, groups: int, expected: int) -> None:
    norm = swap_norms(nn.Sequential(nn.BatchNorm2d(channels)), type="group", groups=groups)[0]
    assert isinstance(norm, nn.GroupNorm)
    assert (norm.num_groups, norm.num_channels) == (expected, channels)


def mlp() -> nn.Sequential:  # BatchNorm1d on (N, C) vectors
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def conv1d_net() -> nn.Sequential:  # BatchNorm1d on (N, C, L) sequences
    return nn.Sequential(nn.Conv1d(3, 16, 3), nn.BatchNorm1d(16), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(16, 10))


def token_net() -> nn.Sequential:  # LayerNorm on (N, L, D) tokens
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Flatten(), nn.Linear(5 * 16, 10))


# model, its input, and per type the layer the norm at index 1 becomes, the model being traced on
# that input; None: the original is kept (instance norm of (N, C) vectors is undefined).
NORM_CASES: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...], dict[str, type[nn.Module] | None]]] = {
    "cnn": (small_cnn, (4, 3, 8, 8), {"batch": nn.BatchNorm2d, "group": nn.GroupNorm,
                                      "layer": nn.GroupNorm, "instance": nn.InstanceNorm2d}),
    "mlp": (mlp, (4, 8), {"batch": nn.BatchNorm1d, "group": nn.GroupNorm, "layer": nn.GroupNorm,
                          "instance": None}),
    "conv1d": (conv1d_net, (4, 3, 12), {"batch": nn.BatchNorm1d, "group": nn.GroupNorm,
                                        "layer": nn.GroupNorm, "instance": nn.InstanceNorm1d}),
    "tokens": (token_net, (4, 5, 8), {"batch": ChannelsLastNorm, "group": ChannelsLastNorm, "layer": nn.LayerNorm,
                                      "instance": ChannelsLastNorm}),
}


@pytest.mark.parametrize("norm_type", ["batch", "group", "layer", "instance", "none"])
@pytest.mark.parametrize("case", NORM_CASES)
def test_each_norm_type_swaps_and_runs(case: str, norm_type: str) -> None:
    build, shape, expected = NORM_CASES[case]
    model = build()
    original = model[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = swap_norms(model, torch.randn(shape), type=norm_type, groups=32)
    kept = expected.get(norm_type, NoNorm) is None
    assert model[1] is original if kept else type(model[1]) is expected.get(norm_type, NoNorm)
    assert ("kept the model's own norm at 1: instance norm is undefined where it sees a single position"
            in said(caught)) == kept
    out = model(torch.randn(shape))
    out.sum().backward()
    assert out.shape == (shape[0], 10) and torch.isfinite(out).all()


def test_without_an_example_instance_keeps_norms_that_may_see_vectors() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = swap_norms(nn.Sequential(nn.BatchNorm1d(4), nn.LayerNorm(4), nn.BatchNorm2d(4)), type="instance")
    assert isinstance(model[0], nn.BatchNorm1d) and isinstance(model[1], nn.LayerNorm)
    assert isinstance(model[2], nn.InstanceNorm2d)
    assert "kept the model's own norm at 0, 1: instance norm is undefined where it may see (N, C) vectors" \
        in said(caught)


def test_every_norm_kind_is_swapped() -> None:
    norms = [nn.BatchNorm1d(4), nn.BatchNorm2d(4), nn.BatchNorm3d(4), nn.SyncBatchNorm(4),
             nn.GroupNorm(2, 4), nn.LayerNorm(4), LayerNorm2d(4), nn.RMSNorm(4),
             nn.InstanceNorm1d(4), nn.InstanceNorm2d(4), nn.InstanceNorm3d(4)]
    assert {type(n) for n in norms} >= set(NORM_LAYERS)
    model = swap_norms(nn.Sequential(*norms), type="none")
    assert all(isinstance(m, nn.Identity) for m in model)


def test_keep_leaves_the_model_alone() -> None:
    model = small_cnn()
    norm = model[1]
    assert swap_norms(model, type="keep") is model and model[1] is norm


def test_layer_on_vectors_is_layer_norm() -> None:
    norm = swap_norms(nn.BatchNorm1d(16), type="layer")
    x = torch.randn(4, 16)
    torch.testing.assert_close(norm(x), F.layer_norm(x, (16,), eps=norm.eps))


def test_batch_on_tokens_normalizes_each_feature_over_batch_and_tokens() -> None:
    norm = swap_norms(nn.LayerNorm(6), type="batch")
    x = torch.randn(4, 5, 6) * 3 + 1
    y = norm(x).reshape(-1, 6)
    torch.testing.assert_close(y.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


def test_group_and_instance_on_tokens_take_the_tokens_as_positions() -> None:
    x = torch.randn(4, 5, 6) * 3 + 1
    group = swap_norms(nn.LayerNorm(6), x, type="group", groups=2)
    torch.testing.assert_close(group(x), F.group_norm(x.transpose(1, 2), 2).transpose(1, 2), atol=1e-5, rtol=0)
    instance = swap_norms(nn.LayerNorm(6), x, type="instance")
    torch.testing.assert_close(instance(x), F.instance_norm(x.transpose(1, 2)).transpose(1, 2), atol=1e-5, rtol=0)


def test_rms_norm_is_swapped_like_a_layer_norm() -> None:
    x = torch.randn(4, 5, 6)
    assert isinstance(swap_norms(nn.RMSNorm(6), x, type="layer"), nn.LayerNorm)
    batch = swap_norms(nn.RMSNorm(6), x, type="batch")
    assert isinstance(batch, ChannelsLastNorm) and isinstance(batch.norm, nn.BatchNorm1d)


def feature_map(channels: int = 24) -> Tensor:
    return torch.randn(2, channels, 5, 7) * 2 + 1


@pytest.mark.parametrize("layer_norm_2d", ["torchvision", "timm"])
def test_channel_first_layer_norm_is_a_feature_map_norm(layer_norm_2d: str) -> None:
    build = pytest.importorskip("timm.layers").LayerNorm2d if layer_norm_2d == "timm" else LayerNorm2d
    x = feature_map()
    assert isinstance(swap_norms(build(24), x, type="batch"), nn.BatchNorm2d)
    group = swap_norms(build(24), type="group", groups=16)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 12
    layer = swap_norms(build(24), type="layer")  # per position, over the channels, as before
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (24,), eps=1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_group_norm_with_one_group_is_a_layer_norm_over_channels_and_positions() -> None:
    x = feature_map()
    layer = swap_norms(nn.GroupNorm(1, 24), type="layer")
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 1
    torch.testing.assert_close(layer(x), F.group_norm(x, 1), atol=1e-5, rtol=0)
    assert isinstance(swap_norms(nn.GroupNorm(1, 24), x, type="batch"), nn.BatchNorm2d)


class BatchNormAct(nn.BatchNorm2d):
    """A fused norm + activation layer built the way timm builds its BatchNormAct2d."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def fused_layers() -> list[nn.Module]:
    layers: list[nn.Module] = [BatchNormAct(24)]
    timm_layers = pytest.importorskip("timm.layers")
    layers += [timm_layers.BatchNormAct2d(24, act_layer=nn.SiLU), timm_layers.GroupNormAct(24, 8, act_layer=nn.SiLU),
               timm_layers.LayerNormAct2d(24, act_layer=nn.SiLU), timm_layers.RmsNormAct2d(24, act_layer=nn.SiLU)]
    return layers


@pytest.mark.parametrize("norm_type", ["batch", "group", "layer", "instance", "none"])
def test_fused_norm_activation_layers_keep_their_activation(norm_type: str) -> None:
    from autotrick.tricks.norm import NormAct

    x = feature_map()
    for fused in fused_layers():
        act = fused.act
        new = swap_norms(nn.Sequential(fused), x, type=norm_type)[0]
        assert isinstance(new, NormAct) and new.act is act, type(fused).__name__
        y = new.train()(x)
        torch.testing.assert_close(y, F.silu(new.norm(x)))
        assert (y < 0).any() and y.min() > -0.2785  # SiLU's minimum: the activation is there


def test_a_shared_norm_stays_one_shared_module() -> None:
    shared = nn.BatchNorm2d(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), shared, nn.Conv2d(8, 8, 3), shared)
    swap_norms(model, torch.randn(2, 3, 9, 9), type="group", groups=4)
    assert isinstance(model[1], nn.GroupNorm) and model[1] is model[3]
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 1


def test_instance_keeps_norms_on_one_by_one_maps_and_says_where() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(8),
                          nn.Flatten(), nn.Linear(8, 3))
    head_norm = model[3]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swap_norms(model, torch.randn(2, 3, 8, 8), type="instance")
    assert isinstance(model[1], nn.InstanceNorm2d) and model[3] is head_norm
    assert said(caught) == ("norm.type=instance: kept the model's own norm at 3: instance norm is undefined "
                            "where it sees a single position (vectors or a 1x1 map)")
    model.train()(torch.randn(2, 3, 8, 8)).sum().backward()  # no "more than 1 spatial element"


def test_the_tricks_command_lists_the_layers_the_swap_recognizes(capsys: pytest.CaptureFixture[str]) -> None:
    from autotrick.commands import list_tricks

    list_tricks()
    out = capsys.readouterr().out
    for layer in ("BatchNorm1d/2d/3d", "RMSNorm", "torchvision LayerNorm2d", "BatchNormAct2d", "GroupNormAct",
                  "RmsNorm2d", "frozen batch norms"):
        assert layer in out


def test_look_alike_norms_are_left_alone_and_said() -> None:
    class FancyNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.scale

    model = nn.Sequential(nn.Conv2d(3, 8, 3), FancyNorm(), nn.BatchNorm2d(8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swap_norms(model, type="group")
    assert isinstance(model[1], FancyNorm) and isinstance(model[2], nn.GroupNorm)
    assert "left FancyNorm as they are: not norm layers the swap recognizes" in said(caught)


def test_frozen_batch_norm_is_a_norm() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    assert isinstance(swap_norms(FrozenBatchNorm2d(8), type="group", groups=4), nn.GroupNorm)


def test_new_layers_follow_the_old_dtype() -> None:
    model = small_cnn().double()
    swap_norms(model, type="group")
    assert model[1].weight.dtype == torch.float64
    assert model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_unknown_norm_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown norm type"):
        swap_norms(small_cnn(), type="weight")


# --- dropout -------------------------------------------------------------------------------------


def test_p_set_on_every_dropout_kind() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.Sequential(nn.AlphaDropout(0.2)),
                          nn.Unflatten(1, (2, 4, 1)), nn.Dropout2d(0.3), nn.Flatten(), nn.Linear(8, 2))
    set_dropout(model, p=0.4)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout | nn.Dropout2d | nn.AlphaDropout)]
    assert [d.p for d in dropouts] == [0.4, 0.4, 0.4]
    assert isinstance(model[-1], nn.Linear)  # nothing inserted: the model has its own
    set_dropout(model, p=None)
    assert [d.p for d in dropouts] == [0.4, 0.4, 0.4]


def test_a_model_without_dropout_gets_one_before_its_last_linear() -> None:
    model = resnet18(weights=None, num_classes=10)
    fc = model.fc
    set_dropout(model, p=0.3)
    assert isinstance(model.fc, nn.Sequential) and model.fc[1] is fc
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == 0.3
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_dropout_before_a_bare_linear_and_none_for_p_zero() -> None:
    wrapped = set_dropout(nn.Linear(4, 2), p=0.5)
    assert isinstance(wrapped, nn.Sequential) and isinstance(wrapped[0], nn.Dropout)
    model = mlp()
    set_dropout(model, p=0.0)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_no_dropout_and_no_linear_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="neither a Dropout nor a classifier layer"):
        set_dropout(nn.Sequential(nn.Conv2d(3, 4, 1)), p=0.2)


# torchvision heads that are not a Linear right after the features: (model, input size, the
# classifier's path after the swap, whether the model has a Dropout feeding it already).
HEADS = {
    "vit_b_32": (32, "heads.head", False), "swin_t": (32, "head", False), "alexnet": (64, "classifier.6", False),
    "maxvit_t": (224, "classifier.5", False), "efficientnet_b0": (32, "classifier.1", True),
    "squeezenet1_1": (32, "classifier.1", True), "mobilenet_v3_small": (32, "classifier.3", True),
}


@pytest.mark.parametrize("name", HEADS)
def test_dropout_goes_right_before_the_final_classifier(name: str) -> None:
    import torchvision

    size, path, has_one = HEADS[name]
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    with torch.device("meta"):  # where the layers are, not what they compute
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    classifier = model.get_submodule(path)
    x = torch.empty(2, 3, size, size, device="meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_dropout(model, x, p=0.25)
    if has_one:
        assert model.get_submodule(path) is classifier
        assert said(caught).endswith("one of them feeds the classifier")
    else:
        wrapped = model.get_submodule(path)
        assert isinstance(wrapped, nn.Sequential) and wrapped[1] is classifier
        assert isinstance(wrapped[0], nn.Dropout) and wrapped[0].p == 0.25
        assert said(caught).endswith(f"added Dropout(0.25) before {path}")
    assert all(m.p == 0.25 for m in model.modules() if isinstance(m, nn.Dropout))
    assert model.train()(x).shape == (2, 10)


class WithAuxHead(nn.Module):
    """An auxiliary head registered after the real classifier, used only in training."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)
        self.aux = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        return self.fc(features) if not self.training else self.fc(features) + 0 * self.aux(features)


def test_dropout_goes_before_the_classifier_not_an_auxiliary_head() -> None:
    model = WithAuxHead()
    fc, aux = model.fc, model.aux
    set_dropout(model, torch.randn(2, 3, 8, 8), p=0.3)
    assert isinstance(model.fc, nn.Sequential) and model.fc[1] is fc and model.aux is aux
