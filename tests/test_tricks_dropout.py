"""The dropout trick (autotrick.tricks.dropout): p on every dropout layer, one added before the classifier."""

import warnings

import pytest
import torch
from helpers import mlp, one_thread, said  # noqa: F401  (one_thread: autouse)
from torch import Tensor, nn
from torchvision.models import resnet18

from autotrick.errors import ConfigError
from autotrick.tricks.dropout import set_dropout


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
