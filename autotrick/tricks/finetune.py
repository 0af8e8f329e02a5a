"""Fine-tuning from weights: a new head where the class count differs, the backbone frozen for the
first epochs, a larger learning rate for the head, layer-wise learning-rate decay.

The head is the classifier (head.py: found on the traced data flow, so SqueezeNet's conv and
ViT's `heads.head` are heads too). The backbone is every other trainable parameter.
lr of the head:                    lr * head_lr_mult
lr of layer i below the head:      lr * layer_decay^i      (i = 1 for the layer just below it)
freeze_epochs: the backbone gets no gradient (requires_grad off) in epochs 0 .. freeze_epochs - 1;
               its norm layers still update their running statistics in train mode.

A "layer", for any model: the model's own parameters (a class token, ...) are one layer each, and
so is each of its children, in registration order; an nn.Sequential, nn.ModuleList or nn.ModuleDict
is opened into its children, as is a module holding a stack of blocks (a container of at least 4
modules of one class, e.g. a ViT encoder's). So ResNet's layers are the stem's conv and norm, then
each residual block; MobileNet's and EfficientNet's each block of `features`; ConvNeXt's each block
and downsampling step; ViT's the class token, the patch embedding, the position embedding, each
encoder block and the last norm.
"""

from collections.abc import Mapping
from itertools import chain

import torch
from torch import Tensor, nn

from autotrick.errors import ConfigError
from autotrick.params import Param, Trick
from autotrick.tricks.head import classifier, conv2d_like, module_paths, replace_module

FINETUNE = Trick(
    name="finetune",
    summary="backbone frozen for the first epochs; head lr = lr * head_lr_mult; layer i below it lr * decay^i",
    params=(
        Param("freeze_epochs", "int", 0, "epochs with the backbone frozen (only the head trains); 0 is off",
              low=0, high=3, bounds=(0, 10000)),
        Param("head_lr_mult", "float", 1.0, "the classifier's learning rate as a multiple of lr; 1 is off",
              low=1.0, high=10.0, log=True, bounds=(0.001, 1000.0)),
        Param("layer_decay", "float", 1.0, "layer-wise lr decay: lr * decay^i for layer i below the head; 1 is off",
              low=0.5, high=1.0, bounds=(0.01, 1.0)),
    ),
)

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_STACK = 4  # a container of this many modules of one class is a stack of blocks


def head_parameters(model: nn.Module, head: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters of the classifier layers `head` (head.classifier), which must exist."""
    if not head:
        raise ConfigError(f"finetune: {type(model).__name__} has no classifier layer (a layer with parameters "
                          "that makes the output) to treat as the head")
    return [p for layer in head for p in layer.parameters()]


def _is_stack(module: nn.Module) -> bool:
    children = list(module.children())
    return isinstance(module, _CONTAINERS) and len(children) >= _STACK and len({type(c) for c in children}) == 1


def _opened(module: nn.Module) -> bool:
    return type(module) in _CONTAINERS or any(_is_stack(child) for child in module.children())


def layers(model: nn.Module) -> list[list[nn.Parameter]]:
    """The model's parameters by layer (see the module docstring), from the input to the output."""
    found: list[list[nn.Parameter]] = []

    def visit(module: nn.Module) -> None:
        found.extend([p] for p in module.parameters(recurse=False))
        for child in module.children():
            if _opened(child):
                visit(child)
            elif params := list(child.parameters()):
                found.append(params)

    visit(model)
    return found


def lr_multipliers(model: nn.Module, *, head: list[nn.Module], head_lr_mult: float = 1.0,
                   layer_decay: float = 1.0, freeze_epochs: int = 0) -> dict[int, float] | None:
    """Each parameter's lr multiplier by id: head_lr_mult for the head, layer_decay^i for layer i
    below it; None when both are 1 (every parameter at lr). `freeze_epochs` is accepted so that
    every finetune value can be passed with `**`."""
    if head_lr_mult == 1.0 and layer_decay == 1.0:
        return None
    head_ids = {id(p) for p in head_parameters(model, head)}
    below = [[p for p in layer if id(p) not in head_ids] for layer in layers(model)]
    below = [layer for layer in below if layer]
    multipliers = {id(p): layer_decay ** (len(below) - i) for i, layer in enumerate(below) for p in layer}
    return multipliers | dict.fromkeys(head_ids, head_lr_mult)


def split_by_lr(groups: list[dict], multipliers: Mapping[int, float], lr: float) -> list[dict]:
    """Each parameter group split by lr multiplier, into groups with lr = lr * multiplier (the
    other settings kept), the largest learning rate first: setup.lr then reads the head's."""
    split: list[dict] = []
    for group in groups:
        by_mult: dict[float, list[nn.Parameter]] = {}
        for p in group["params"]:
            by_mult.setdefault(multipliers.get(id(p), 1.0), []).append(p)
        split.extend({**group, "params": params, "lr": lr * mult} for mult, params in by_mult.items())
    return sorted(split, key=lambda g: -g["lr"])


def backbone_parameters(model: nn.Module, head: list[nn.Module]) -> list[nn.Parameter]:
    """The trainable parameters outside the head: what freeze_epochs freezes."""
    head_ids = {id(p) for p in head_parameters(model, head)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]


def set_frozen(params: list[nn.Parameter], frozen: bool) -> None:
    for p in params:
        p.requires_grad_(not frozen)


def load_pretrained(model: nn.Module, state_dict: Mapping[str, Tensor], *, head: list[nn.Module], source: str) -> None:
    """Copy `state_dict` (e.g. torchvision's weights) into `model`, in place. The classifier layers
    `head` (head.classifier) keep their fresh weights when the file's have another class count: a
    new head. Any other missing, extra or differently shaped tensor is an error."""
    own = model.state_dict()
    new_head = {f"{path}.{name}".lstrip(".") for layer in head for path in module_paths(model, layer)
                for name, _ in layer.named_parameters()}
    if not any(key in state_dict and state_dict[key].shape != own[key].shape for key in new_head & set(own)):
        new_head = set()  # the same class count: the head is loaded like everything else
    for key in chain(own, state_dict):
        if key in new_head:
            continue
        if key not in state_dict or key not in own:
            where = "the model" if key not in state_dict else "the file"
            other = "file" if where == "the model" else "model"
            raise ConfigError(f"--weights {source}: '{key}' is in {where} but not in the {other}; expected the "
                              f"state dict of the same architecture")
        if state_dict[key].shape != own[key].shape:
            raise ConfigError(f"--weights {source}: '{key}' is {tuple(state_dict[key].shape)} in the file, "
                              f"{tuple(own[key].shape)} in the model; expected the same architecture")
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state_dict.items() if k not in new_head}, strict=False)


def replace_head(model: nn.Module, num_classes: int, example: Tensor | None) -> nn.Module:
    """A fresh classifier layer for `num_classes` in place of the model's own (head.classifier:
    `example` is a batch the model takes), if that has another number of outputs (a trained
    model's classifier for the new data); returns the model."""
    found = classifier(model, example)
    if len(found) != 1 or not isinstance(found[0], nn.Linear | nn.Conv2d):
        raise ConfigError(f"--weights: {type(model).__name__} has no Linear or Conv2d classifier to give "
                          f"{num_classes} outputs")
    old = found[0]
    if isinstance(old, nn.Linear):
        if old.out_features == num_classes:
            return model
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        if old.out_channels == num_classes:
            return model
        new = conv2d_like(old, in_channels=old.in_channels, out_channels=num_classes)
    return replace_module(model, old, new.to(old.weight.device, old.weight.dtype))
