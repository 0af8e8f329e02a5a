"""Models by name: small built-ins, a CIFAR-style ResNet-18, any torchvision classifier, any timm
model, or the user's own builder.

Specs for `build_model`:
  mlp, cnn          small built-ins (cnn, the default for digits, trains 15 epochs in ~1.5 s on 2 cores)
  resnet18          CIFAR-style ResNet-18: 3x3 stride-1 stem, no max pool (for 32x32 images)
  <torchvision>     any name in torchvision.models.list_models(module=torchvision.models), built
                    with weights=None (never downloaded); for in_channels != 3 the first Conv2d is
                    replaced by one with the same hyperparameters and in_channels inputs. vit_* get
                    image_size and maxvit_t input_size from the data; googlenet and inception_v3
                    are built without auxiliary heads, so every model returns plain logits.
  timm:NAME         any name in timm.list_models() (timm is optional: pip install 'autotrick[timm]'),
                    built with pretrained=False (never downloaded), in_chans and num_classes from
                    the data, and img_size where the model takes one (ViTs, Swin, ...); run once
                    on one blank image, since timm builds models it cannot run on such images
  module:function   the user's builder, called with num_classes= (and in_channels=, image_size=
  path/file.py:fn   when its signature takes them); it returns an nn.Module

What torchvision models take small images (weights=None, forward at batch > 1):
  32x32 and up: all but alexnet (>= 63 px), inception_v3 (>= 75 px), maxvit_t (224x224) and
  vit_* (square, a multiple of the patch: 16, 32, or 14 for vit_h_14).
  8x8 (digits): also no convnext_*, densenet*, googlenet, squeezenet*, vgg*, vit_*; efficientnet,
  mobilenet, mnasnet, regnet, resnet/resnext/wide_resnet, shufflenet and swin run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from autotrick.entrypoints import (
    FORMS,
    accepted_kwargs,
    call_user_function,
    check_callable_with,
    is_callable_spec,
    load_callable,
)
from autotrick.errors import ConfigError, first_line
from autotrick.tricks.head import conv2d_like, replace_module

MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet18")
TIMM_PREFIX = "timm:"
EXPECTED = ("expected mlp, cnn, resnet18, a torchvision model name (see torchvision.models.list_models()), "
            f"timm:NAME (see timm.list_models()) or {FORMS}")

# torchvision builders that size themselves from the input (their kwargs hide it from inspect).
_SIZE_KWARG = {"vit_": "image_size", "maxvit_": "input_size"}
# In train mode these return (logits, aux logits...) where a trainer expects logits; init_weights
# is their default, given only to silence the FutureWarning every trial would print.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def build_model(spec: str, *, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    """A freshly initialized model for (in_channels, *image_size) images and num_classes classes."""
    if spec == "mlp":
        return mlp(num_classes, in_channels, image_size)
    if spec == "cnn":
        return cnn(num_classes, in_channels)
    if spec == "resnet18":
        return cifar_resnet18(num_classes, in_channels)
    if spec.startswith(TIMM_PREFIX):
        return _timm_model(spec.removeprefix(TIMM_PREFIX), num_classes, in_channels, image_size)
    if is_callable_spec(spec):
        return _user_model(spec, num_classes, in_channels, image_size)
    import torchvision.models  # slow to import: only when a torchvision model is asked for

    if spec in torchvision.models.list_models(module=torchvision.models):
        return _torchvision_model(spec, num_classes, in_channels, image_size)
    raise ConfigError(f"unknown model '{spec}'; {EXPECTED}")


def mlp(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    # No dropout: the dropout trick adds one before the classifier when it is searched.
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size[0] * image_size[1], 256),
        nn.BatchNorm1d(256), nn.ReLU(inplace=True),
        nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


def cnn(num_classes: int, in_channels: int) -> nn.Module:
    """Two conv blocks and a linear head: small enough to train digits in seconds on a CPU, and
    size-independent (adaptive pooling) so it runs on any image of 8x8 or more."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        # 2x2, not 1x1: keeping where strokes are is worth ~1 point of digits accuracy.
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 2 * 2, num_classes),
    )


def cifar_resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """ResNet-18 with the CIFAR stem: ImageNet's 7x7 stride-2 conv and max pool would shrink a
    32x32 image to 8x8 before the first block."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _torchvision_model(name: str, num_classes: int, in_channels: int,
                       image_size: tuple[int, int]) -> nn.Module:
    import torchvision.models

    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes, **_EXTRA_KWARGS.get(name, {})}
    for prefix, key in _SIZE_KWARG.items():
        if name.startswith(prefix):
            if key == "image_size" and image_size[0] != image_size[1]:
                raise ConfigError(f"model '{name}' needs square images, got {image_size[0]}x{image_size[1]}")
            kwargs[key] = image_size[0] if key == "image_size" else image_size
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except Exception as error:  # e.g. vit: "Input shape indivisible by patch size!"
        raise ConfigError(f"model '{name}' cannot be built for {in_channels}x{image_size[0]}x{image_size[1]} "
                          f"images: {first_line(error)}") from error
    if in_channels != 3:
        _adapt_first_conv(model, name, in_channels)
    return model


def _timm_model(name: str, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise ConfigError(f"model 'timm:{name}' needs timm, which is not installed: "
                          "pip install 'autotrick[timm]'") from error
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model '{name}'; expected a name from timm.list_models()")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    size = image_size[0] if image_size[0] == image_size[1] else image_size
    try:
        try:  # models with a fixed input size (ViTs, Swin, ...) take it; the others refuse the keyword
            model = timm.create_model(name, img_size=size, **kwargs)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
            model = timm.create_model(name, **kwargs)
        with torch.no_grad():  # timm builds anything; what it cannot run shows on the first image
            model.eval()(torch.zeros(1, in_channels, *image_size))
        return model.train()
    except Exception as error:  # e.g. a patch larger than the image, a window that does not divide it
        raise ConfigError(f"model 'timm:{name}' cannot be built for {in_channels}x{image_size[0]}x{image_size[1]} "
                          f"images: {first_line(error)}") from error


def _adapt_first_conv(model: nn.Module, name: str, in_channels: int) -> None:
    """Replace the first Conv2d (in registration order, which is the stem in every torchvision
    classifier) by a fresh one taking in_channels inputs; weights=None, so nothing is lost."""
    old = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if old is None:
        raise ConfigError(f"model '{name}' has no Conv2d to adapt to {in_channels}-channel images")
    new = conv2d_like(old, in_channels=in_channels, out_channels=old.out_channels,
                      groups=math.gcd(old.groups, in_channels))  # a grouped stem keeps what divides
    replace_module(model, old, new)


def _user_model(spec: str, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    fn = load_callable(spec, "model")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    kwargs = accepted_kwargs(fn, offered)
    expected = "fn(num_classes=..., [in_channels=...], [image_size=(H, W)])"
    if "num_classes" not in kwargs:
        raise ConfigError(f"model '{spec}': the function must take num_classes, as {expected}")
    check_callable_with(fn, kwargs, spec, "model", expected)
    model = call_user_function(fn, kwargs, spec, "model")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{spec}': the function returned {type(model).__name__}; "
                          f"expected an nn.Module from {expected}")
    return model
