"""Models by name, with real torch and torchvision (weights=None: nothing is downloaded)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotrick.augment import normalize
from autotrick.data import load_data
from autotrick.errors import ConfigError
from autotrick.models import MODELS, build_model

DIGITS = {"num_classes": 10, "in_channels": 1, "image_size": (8, 8)}
CIFAR = {"num_classes": 100, "in_channels": 3, "image_size": (32, 32)}


def forward(model: nn.Module, shape: dict) -> torch.Tensor:
    x = torch.randn(2, shape["in_channels"], *shape["image_size"])  # batch 2: BatchNorm trains
    return model(x)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [DIGITS, CIFAR], ids=["digits", "cifar"])
def test_builtins_run_forward_and_backward(name: str, shape: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, **shape)
    out = forward(model, shape)
    assert out.shape == (2, shape["num_classes"])
    out.sum().backward()


def test_cnn_runs_on_other_sizes() -> None:
    model = build_model("cnn", num_classes=3, in_channels=3, image_size=(13, 21))
    assert model(torch.randn(2, 3, 13, 21)).shape == (2, 3)


@pytest.fixture
def one_thread() -> Iterator[None]:
    # On a shared 2-core machine, two OpenMP threads spin-waiting on a busy core run 5-20x slower
    # than one thread; one thread keeps this test at a few seconds whatever else is running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_cnn_learns_digits() -> None:
    # The default model on the default data: 15 epochs of SGD must reach 0.97.
    torch.manual_seed(0)
    data = load_data("digits")
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        order = torch.randperm(len(data.train_y), generator=generator)
        for index in order.split(64):
            logits = model(normalize(data.train_x[index], data.mean, data.std))
            loss = F.cross_entropy(logits, data.train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(normalize(data.val_x, data.mean, data.std)).argmax(1)
    assert (predicted == data.val_y).float().mean().item() >= 0.97


def test_resnet18_is_cifar_style() -> None:
    model = build_model("resnet18", **CIFAR)
    assert isinstance(model.conv1, nn.Conv2d)
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (3, (3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 100
    assert build_model("resnet18", **DIGITS).conv1.in_channels == 1


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_models_adapt_the_first_conv(name: str) -> None:
    model = build_model(name, **DIGITS)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    stem_width = {"mobilenet_v3_small": 16, "efficientnet_b0": 32}[name]
    assert (first.in_channels, first.out_channels) == (1, stem_width)
    assert (first.kernel_size, first.stride, first.bias) == ((3, 3), (2, 2), None)
    assert forward(model, DIGITS).shape == (2, 10)
    three = build_model(name, **CIFAR)
    assert next(m for m in three.modules() if isinstance(m, nn.Conv2d)).in_channels == 3


def test_googlenet_returns_plain_logits_in_training() -> None:
    model = build_model("googlenet", **CIFAR).train()  # torchvision's default adds two aux heads
    assert isinstance(forward(model, CIFAR), torch.Tensor)


def test_vit_gets_the_image_size() -> None:
    model = build_model("vit_b_32", num_classes=10, in_channels=1, image_size=(32, 32))
    assert model.image_size == 32 and model.conv_proj.in_channels == 1
    with pytest.raises(ConfigError) as error:
        build_model("vit_b_16", **DIGITS)  # 8 px is not a multiple of the 16 px patch
    assert "vit_b_16" in str(error.value) and "1x8x8" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        build_model("vit_b_16", num_classes=10, in_channels=3, image_size=(32, 64))


USER_MODELS = '''
from torch import nn


def small(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))


def classes_only(num_classes):
    return nn.LazyLinear(num_classes)


def no_classes():
    return nn.Identity()


def not_a_module(num_classes):
    return "a model"


def needs_more(num_classes, depth):
    return nn.Identity()
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODELS)
    return path


def test_user_model_from_a_file(user_file: Path) -> None:
    model = build_model(f"{user_file}:small", **DIGITS)
    assert forward(model, DIGITS).shape == (2, 10)
    assert build_model(f"{user_file}:classes_only", **CIFAR).out_features == 100


def test_user_model_from_a_module(user_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert forward(build_model("my_models:small", **CIFAR), CIFAR).shape == (2, 100)


@pytest.mark.parametrize(("function", "expected"), [
    ("no_classes", "must take num_classes"), ("not_a_module", "returned str"), ("needs_more", "depth"),
    ("absent", "no function 'absent'")])
def test_user_model_mistakes_are_config_errors(user_file: Path, function: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_model(f"{user_file}:{function}", **DIGITS)
    message = str(error.value)
    assert expected in message and f"{user_file}:{function}" in message and "\n" not in message


def test_user_file_with_a_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def build(num_classes):\n    return (\n")
    with pytest.raises(ConfigError) as error:
        build_model(f"{tmp_path / 'bad.py'}:build", **DIGITS)
    assert "SyntaxError" in str(error.value) and "\n" not in str(error.value)


def test_unknown_model_lists_the_alternatives() -> None:
    with pytest.raises(ConfigError) as error:
        build_model("resnet19", **DIGITS)
    message = str(error.value)
    assert message.startswith("unknown model 'resnet19'; expected mlp, cnn, resnet18, a torchvision model")
    assert "module:function" in message and "path/file.py:function" in message and "\n" not in message


# --- timm (an optional extra; in the test extra, so CI runs these) --------------------------------


def test_timm_model_by_name_takes_the_datas_channels_and_size() -> None:
    pytest.importorskip("timm")
    model = build_model("timm:test_vit", num_classes=10, in_channels=1, image_size=(32, 32))
    assert model.patch_embed.proj.in_channels == 1  # in_chans from the data; img_size too: 32 is not its 160
    assert forward(model, {"in_channels": 1, "image_size": (32, 32)}).shape == (2, 10)
    conv_net = build_model("timm:test_resnet", **DIGITS)  # a model without img_size builds without it
    assert forward(conv_net, DIGITS).shape == (2, 10)


def test_unknown_timm_model_is_one_line() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as error:
        build_model("timm:resnet19x", **DIGITS)
    assert str(error.value) == "unknown timm model 'resnet19x'; expected a name from timm.list_models()"


def test_timm_not_installed_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # what `import timm` finds without it
    with pytest.raises(ConfigError) as error:
        build_model("timm:resnet18", **DIGITS)
    assert "pip install 'autotrick[timm]'" in str(error.value) and "\n" not in str(error.value)


def test_a_timm_model_that_cannot_take_the_images_is_one_line() -> None:
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as error:
        build_model("timm:test_vit", **DIGITS)  # its 16-pixel patches do not fit an 8x8 image
    assert str(error.value).startswith("model 'timm:test_vit' cannot be built for 1x8x8 images: ")
    assert "\n" not in str(error.value)
