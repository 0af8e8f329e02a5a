"""The model check after the tricks (diagnose.py), and how a damaged model reaches the trial's
result, `autotrick train`'s output and the search's trial record. Real torch, nothing mocked but
Ray's report function (the search's trainable is called in-process)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from autotrick.data import describe_data
from autotrick.diagnose import check_model, count_activations
from autotrick.space import resolve_values
from autotrick.trainer import TrainConfig, run_trial


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def images() -> Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_a_healthy_model_passes() -> None:
    model = small_net()
    assert check_model(model, images(), activations_before=count_activations(model, images())) == ""


def test_lost_activations_are_counted() -> None:
    model = small_net()
    before = count_activations(model, images())
    assert before == 2
    model[2] = nn.Identity()  # what a fused norm-activation layer swapped for a bare norm looks like
    assert check_model(model, images(), activations_before=before) == \
        "model check: 1 of 2 activation functions are gone"


def test_dead_features_and_a_classifier_without_gradient() -> None:
    model = small_net()
    with torch.no_grad():
        model[4].weight.zero_()  # the last norm's output is its bias, 0, for every image
    assert check_model(model, images()) == ("model check: the features reaching the classifier no longer depend "
                                            "on the input; the classifier 8 gets no gradient")


def test_a_zero_initialized_classifier_is_not_damage() -> None:
    model = small_net()
    with torch.no_grad():
        model[8].weight.zero_()  # torchvision's ViT does this: the logits are equal, the features are not
    assert check_model(model, images()) == ""


def test_the_check_leaves_the_model_as_it_was() -> None:
    model = small_net().eval()
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    check_model(model, images())
    assert torch.rand(1) == expected_draw  # the random generators were forked, not advanced
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats included


# A user model whose scale depends on its norms: bias-free convolutions at std 1e-3. With its
# BatchNorms the signal is renormalized at every layer; without them it shrinks 100x per layer.
VANISHING = '''
from torch import nn


def build(num_classes, in_channels):
    layers, channels = [], in_channels
    for _ in range(8):
        conv = nn.Conv2d(channels, 16, 3, padding=1, bias=False)
        nn.init.normal_(conv.weight, std=1e-3)
        layers += [conv, nn.BatchNorm2d(16), nn.ReLU()]
        channels = 16
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


@pytest.fixture
def vanishing(tmp_path: Path) -> str:
    path = tmp_path / "vanishing.py"
    path.write_text(VANISHING)
    return f"{path}:build"


def train_once(model: str, sets: dict[str, object]) -> tuple[object, list[tuple[list[str], str]]]:
    prepared: list[tuple[list[str], str]] = []
    reports: list[object] = []
    result = run_trial(resolve_values(sets, "test"), TrainConfig(model=model, epochs=1, batch_size=256, threads=1),
                       reports.append, on_prepared=lambda notes, warning: prepared.append((notes, warning)))
    assert all(r.warning == result.warning for r in reports)  # every epoch's report carries it
    return result, prepared


def test_a_trial_whose_tricks_damage_the_model_says_so(vanishing: str) -> None:
    result, prepared = train_once(vanishing, {"norm.type": "none", "dropout.p": 0.1})
    assert result.warning == "model check: the features reaching the classifier no longer depend on the input"
    assert result.notes == ["dropout: p=0.1 on 0 existing Dropout layers; added Dropout(0.1) before 26"]
    assert prepared == [(result.notes, result.warning)]
    assert result.outcome == "finished"  # a bad trick, not a failure: the trial still runs


def test_the_same_model_with_its_norms_is_fine(vanishing: str) -> None:
    result, prepared = train_once(vanishing, {})
    assert result.warning == "" and result.notes == [] and prepared == [([], "")]


def test_train_prints_the_notes_and_the_warning(vanishing: str, capsys: pytest.CaptureFixture[str]) -> None:
    from autotrick.commands import run_train

    run_train(model=vanishing, data=None, data_dir=None, seed=0, device="cpu", epochs=1, batch_size=256,
              recipe_ref=None, sets={"norm.type": "none", "init.zero_last_norm": True})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "note: init.zero_last_norm: no residual branch ends in a norm here; nothing zeroed"
    assert lines[2] == "warning: model check: the features reaching the classifier no longer depend on the input"
    assert lines[3].startswith("epoch   1")


def test_the_search_records_the_warning_as_the_trials_reason(vanishing: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrick.search import _trial as search  # where the trainable reports to Tune

    reported: list[dict[str, object]] = []
    monkeypatch.setattr(search.tune, "report", reported.append)
    config = {**resolve_values({"norm.type": "none"}, "test"), search.TRIAL_KEY: 3, search.BASELINE_KEY: False}
    search.run_one_trial(config, train=TrainConfig(model=vanishing, epochs=1, batch_size=256, threads=1),
                         metric="val_accuracy", state_dir=None, size=describe_data("digits"))
    assert reported and all(r["reason"] == "model check: the features reaching the classifier no longer depend "
                                           "on the input" for r in reported)
