"""A recipe applied through the Python API is as safe as `autotrick train`: the same model check,
reported; the example taken as the loop holds it; one line when a trick needs an example that was
not given; and the README's own-loop snippet runs as written. Real torch, nothing mocked."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from autotrick.errors import ConfigError, ModelCheckWarning, TrickNote
from autotrick.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent


class BatchNormReLU(nn.BatchNorm2d):
    """A batch norm with its activation fused into its forward (as some model zoos write it)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x))


def fused_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), BatchNormReLU(8), nn.Conv2d(8, 8, 3, padding=1),
                         BatchNormReLU(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def digits_uint8(n: int) -> tuple[Tensor, Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.images[:n] * 255 / 16, dtype=torch.uint8).unsqueeze(1)
    return images, torch.tensor(digits.target[:n])


def test_a_swap_that_drops_a_fused_activation_is_warned_and_kept_on_the_setup() -> None:
    recipe = Recipe(tricks={"norm.type": "group"})
    images, _ = digits_uint8(4)
    with pytest.warns(ModelCheckWarning, match=r"model check: 2 of 2 activation functions are gone"):
        setup = recipe.apply(fused_net(), num_classes=10, steps_per_epoch=1, epochs=1, example=images)
    assert setup.model_check.startswith("model check: 2 of 2 activation functions are gone")


def test_a_healthy_setup_has_no_model_check_warning() -> None:
    recipe = Recipe(tricks={"norm.type": "group"})
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelCheckWarning)
        setup = recipe.apply(model, num_classes=10, steps_per_epoch=1, epochs=1, example=digits_uint8(4)[0])
    assert setup.model_check == ""
    assert isinstance(setup.model[1], nn.GroupNorm)


def test_the_example_is_taken_in_the_dtype_the_loop_holds() -> None:
    recipe = Recipe(tricks={"init.zero_last_norm": True, "dropout.p": 0.2})
    images, _ = digits_uint8(4)
    for example in (images, images.long(), images.float() / 255):
        setup = recipe.apply(fused_net(), num_classes=10, steps_per_epoch=1, epochs=1, example=example)
        assert isinstance(setup.model[-1], nn.Sequential) and isinstance(setup.model[-1][0], nn.Dropout)


def test_a_trick_that_needs_an_example_says_so_in_one_line_before_anything_runs() -> None:
    model = fused_net()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ConfigError, match=r"^norm.type=instance is undefined on a 1x1 map.*example=x\)$"):
        Recipe(tricks={"norm.type": "instance"}).apply(model, num_classes=10, steps_per_epoch=1, epochs=1)
    with pytest.raises(ConfigError, match=r"^init.zero_last_norm .*example=x\)$"):
        Recipe(tricks={"init.zero_last_norm": True}).apply(model, num_classes=10, steps_per_epoch=1, epochs=1)
    assert [type(m) for m in model.modules()] == before  # nothing was swapped before the refusal


def test_without_an_example_one_line_says_what_the_tricks_guess() -> None:
    with pytest.warns(TrickNote, match=r"^no example batch: norm.type=group guesses which dimensions each norm "
                                       r"normalizes; dropout.p=0.1 guesses the classifier"):
        Recipe(tricks={"norm.type": "group", "dropout.p": 0.1}).apply(fused_net(), num_classes=10,
                                                                      steps_per_epoch=1, epochs=1)


def test_a_distillation_recipe_without_a_teacher_module_names_the_fix() -> None:
    from autotrick.apply import apply_tricks

    with pytest.raises(ConfigError, match=r"pass the teacher's model, teacher=autotrick.load_model\('models:/t@a'\)"):
        apply_tricks({"distill.teacher": "models:/t@a"}, fused_net(), num_classes=10, steps_per_epoch=1, epochs=1)


def readme_own_loop_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Recipes and your own training loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readmes_own_loop_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippet, verbatim, with what it leaves to the reader: MyNet, a loader of uint8 images, a
    recipe file (one with a norm swap, zero-init of closing norms, augmentation and pruning)."""
    recipe = Recipe(tricks={"norm.type": "group", "init.zero_last_norm": True, "augment.policy": "trivialaugment",
                            "smoothing.eps": 0.1, "prune.ratio": 0.5, "prune.finetune_epochs": 1},
                    training={"epochs": 15, "seed": 0})
    recipe.write(tmp_path / "quick.recipe.yaml")
    monkeypatch.chdir(tmp_path)
    images, labels = digits_uint8(64)
    loader = DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)

    class MyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.fc = nn.Linear(8, 10)

        def forward(self, x: Tensor) -> Tensor:
            x = self.conv(x)
            x = torch.relu(x + self.block(x))
            return self.fc(x.mean((2, 3)))

    namespace = {"MyNet": MyNet, "loader": loader}
    torch.manual_seed(0)
    exec(compile(readme_own_loop_snippet(), "README.md", "exec"), namespace)
    setup, model = namespace["setup"], namespace["model"]
    assert isinstance(model.conv[1], nn.GroupNorm)
    assert 0.45 < namespace["sparsity"].sparsity < 0.55  # type: ignore[attr-defined]
    assert setup.model_check == ""  # type: ignore[attr-defined]
    assert model(images[:2].float() / 255).shape == (2, 10)
