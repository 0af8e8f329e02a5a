"""The norm swap (autotrick.tricks.norm) against the layers it recognizes and their formulas, with real torch."""

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp, one_thread, said, small_cnn  # noqa: F401  (one_thread: autouse)
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.convnext import LayerNorm2d

from autotrick.tricks.norm import NORM_LAYERS, ChannelsLastNorm, NoNorm, swap_norms

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
