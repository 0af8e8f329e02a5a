"""Fine-tuning from weights: a new head where the class count differs, the backbone frozen for the
first epochs, a larger learning rate for the head, layer-wise learning-rate decay.

The head is the classifier: the last nn.Linear registered whose out_features is the class count.
The backbone is every other trainable parameter.
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


def classifier_name(model: nn.Module, num_classes: int) -> str | None:
    """The name of the last nn.Linear registered with `num_classes` outputs, or None."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return found[-1] if found else None


def head_parameters(model: nn.Module, num_classes: int) -> list[nn.Parameter]:
    name = classifier_name(model, num_classes)
    if name is None:
        raise ConfigError(f"finetune: {type(model).__name__} has no Linear classifier with {num_classes} outputs")
    return list(model.get_submodule(name).parameters())


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


def lr_multipliers(model: nn.Module, *, num_classes: int, head_lr_mult: float = 1.0,
                   layer_decay: float = 1.0, freeze_epochs: int = 0) -> dict[int, float] | None:
    """Each parameter's lr multiplier by id: head_lr_mult for the head, layer_decay^i for layer i
    below it; None when both are 1 (every parameter at lr). `freeze_epochs` is accepted so that
    every finetune value can be passed with `**`."""
    if head_lr_mult == 1.0 and layer_decay == 1.0:
        return None
    head = {id(p) for p in head_parameters(model, num_classes)}
    below = [[p for p in layer if id(p) not in head] for layer in layers(model)]
    below = [layer for layer in below if layer]
    multipliers = {id(p): layer_decay ** (len(below) - i) for i, layer in enumerate(below) for p in layer}
    return multipliers | dict.fromkeys(head, head_lr_mult)


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


def backbone_parameters(model: nn.Module, num_classes: int) -> list[nn.Parameter]:
    """The trainable parameters outside the head: what freeze_epochs freezes."""
    head = {id(p) for p in head_parameters(model, num_classes)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in head]


def set_frozen(params: list[nn.Parameter], frozen: bool) -> None:
    for p in params:
        p.requires_grad_(not frozen)


def load_pretrained(model: nn.Module, state_dict: Mapping[str, Tensor], *, num_classes: int, source: str) -> None:
    """Copy `state_dict` (e.g. torchvision's weights) into `model`, in place. The classifier (the
    last Linear with `num_classes` outputs) keeps its fresh weights when the file's has another
    class count: a new head. Any other missing, extra or differently shaped tensor is an error."""
    own = model.state_dict()
    head = classifier_name(model, num_classes)
    new_head = {f"{head}.weight", f"{head}.bias"} if head else set()
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


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh nn.Linear for `num_classes` in place of the model's last Linear, if that has another
    number of outputs (a trained model's classifier for the new data); returns the model."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"--weights: {type(model).__name__} has no Linear classifier to give {num_classes} outputs")
    old = model.get_submodule(linears[-1])
    if old.out_features == num_classes:
        return model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    parent, _, attr = linears[-1].rpartition(".")
    if not attr:
        return new
    setattr(model.get_submodule(parent), attr, new)
    return model
