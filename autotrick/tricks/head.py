"""The model's classifier, and "put this module where that one was": what the model-side tricks
(norm, dropout, init, finetune), the model builders, the model check and pruning share.

The classifier is found one way, on the traced data flow (see trace.py): the layers with
parameters of their own (and none in their children) whose output reaches the model's output
without passing through another such layer, norms aside (a head may end in one). That is
ResNet's `fc`, ViT's `heads.head`, timm's `head.fc`, the Linear at the end of a `classifier`
Sequential, SqueezeNet's final 1x1 conv, and both heads of a distilled ViT.

Without an example batch nothing can be traced: the classifier is then taken to be the last
nn.Linear registered (the one with `num_classes` outputs, when that is known and one has it).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from autotrick.tricks.norm_layers import is_norm
from autotrick.tricks.trace import Trace, trace


def final_layers(record: Trace) -> list[nn.Module]:
    """The layers that make the traced model's output (module docstring), output first."""
    made = record.made_by()
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack = list(record.outputs)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        layer = next((m for m in made.get(node, []) if not is_norm(m) and _is_layer(m)), None)
        if layer is not None:
            if layer not in found:
                found.append(layer)
            continue
        stack.extend(p for p in record.parents[node] if record.is_data[p])
    return found


def _is_layer(module: nn.Module) -> bool:
    # A ViT holds its class token itself: a module with parameters of its own and in its children is no layer.
    return any(True for _ in module.parameters(recurse=False)) and \
        not any(True for child in module.children() for _ in child.parameters())


def classifier(model: nn.Module, example: Tensor | None, *, num_classes: int | None = None) -> list[nn.Module]:
    """The layer(s) that make `model`'s logits: one for a classifier, two for a distilled ViT's two
    heads; [] when none is found. `example`, a batch the model takes, is traced once; without it,
    the last nn.Linear registered (with `num_classes` outputs, if given and one has them)."""
    if example is not None:
        return final_layers(trace(model, example))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    sized = [m for m in linears if m.out_features == num_classes]
    chosen = sized or linears
    return [chosen[-1]] if chosen else []


def module_paths(model: nn.Module, module: nn.Module) -> list[str]:
    """Every path `module` is registered at in `model` ("" for the model itself)."""
    return [path for path, m in model.named_modules(remove_duplicate=False) if m is module]


def replace_modules(model: nn.Module, new_for: Mapping[nn.Module, nn.Module]) -> nn.Module:
    """Put `new_for[old]` at every path where `old` is registered in `model` (a module shared by two
    blocks stays shared: both get the same new one). Returns `model`, or the new module when
    `model` is itself one of the old ones."""
    if model in new_for:
        return new_for[model]
    found = [(path, new_for[m]) for path, m in model.named_modules(remove_duplicate=False) if m in new_for]
    for path, new in found:
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, new)
    return model


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> nn.Module:
    """`new` at every path where `old` is in `model`; returns `model`, or `new` when `model` is `old`."""
    return replace_modules(model, {old: new})


def conv2d_like(old: nn.Conv2d, *, in_channels: int, out_channels: int, groups: int = 1) -> nn.Conv2d:
    """A freshly initialized Conv2d with `old`'s kernel, stride, padding, dilation, bias and
    padding mode, for other channel counts (a first conv for other images, a new conv head)."""
    def pair(value: tuple[int, ...]) -> tuple[int, int]:
        return value[0], value[-1]

    padding = old.padding if isinstance(old.padding, str) else pair(old.padding)
    return nn.Conv2d(in_channels, out_channels, pair(old.kernel_size), pair(old.stride), padding, pair(old.dilation),
                     groups=groups, bias=old.bias is not None, padding_mode=old.padding_mode)
