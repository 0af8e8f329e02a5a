"""The classifier found one way (on the traced data flow) and a module replaced at every path it is
registered at (tricks/head.py), as dropout, finetune and the model builders use them. Real torch
and torchvision models, nothing mocked."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from autotrick.tricks.head import classifier, module_paths, replace_module


def test_the_classifier_of_squeezenet_is_its_final_conv_not_a_linear() -> None:
    model = torchvision.models.squeezenet1_1(num_classes=7)
    found = classifier(model, torch.randn(2, 3, 64, 64))
    assert found == [model.classifier[1]] and isinstance(found[0], nn.Conv2d)


def test_the_classifier_of_a_vit_is_heads_head() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16,
                              num_classes=5)
    assert classifier(model, torch.randn(2, 3, 32, 32)) == [model.heads.head]


def test_without_an_example_the_classifier_is_the_last_linear_with_the_class_count() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4), nn.Linear(4, 4))
    assert classifier(model, None, num_classes=10) == [model[1]]
    assert classifier(model, None) == [model[4]]
    assert classifier(nn.Sequential(nn.Conv2d(1, 2, 1)), None) == []


def test_a_module_is_replaced_at_every_path_and_as_the_model_itself() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared))
    new = nn.Linear(4, 4)
    assert module_paths(model, shared) == ["0", "2.0"]
    assert replace_module(model, shared, new) is model
    assert model[0] is new and model[2][0] is new
    assert replace_module(shared, shared, new) is new
