"""A quick check, on one batch, that the model-side tricks left a model that can learn.

A swap or an initializer can leave a network that trains without error and learns nothing: a
fused norm-activation layer replaced by a bare norm loses its activation; removing the norms of
a network whose scale depends on them (GoogLeNet, EfficientNet) leaves features that no longer
depend on the image; zeroing a norm on a path without a skip does the same. `check_model` looks
for exactly those, once, before training:

- no activation was lost: the activation functions one forward pass calls (trace.py counts
  them) are at least as many as before the tricks (`count_activations` on the untouched model);
- the features reaching the classifier (head.final_layers) still differ from image to image,
  in training mode, and are finite;
- the classifier receives a finite, non-zero gradient from a cross-entropy loss.

It returns one line ("" when all is well). The forward/backward pass runs in training mode but
leaves nothing behind: running statistics and every buffer are restored, the gradients cleared,
and the random generators forked, so a trial trains exactly as it would have without the check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autotrick.tricks.head import final_layers
from autotrick.tricks.trace import inputs_of, no_side_effects, same_for_every_sample, tensors_in, trace


def count_activations(model: nn.Module, example: Tensor) -> int:
    """How many activation function calls one forward pass of `model` makes."""
    return trace(model, example).activations


def check_model(model: nn.Module, example: Tensor, *, activations_before: int | None = None) -> str:
    """One line naming what is wrong with `model` after the tricks, or "" (module docstring)."""
    record = trace(model, example)
    problems = []
    if activations_before is not None and record.activations < activations_before:
        problems.append(f"{activations_before - record.activations} of {activations_before} activation "
                        "functions are gone")
    names = {module: name or "(the model)" for name, module in model.named_modules()}
    classifiers = final_layers(record)
    features, grads = _train_step(model, example, classifiers)
    if not all(torch.isfinite(f).all() for f in features):
        problems.append("the features reaching the classifier are not finite")
    elif features and all(same_for_every_sample(f) for f in features):
        problems.append("the features reaching the classifier no longer depend on the input")
    dead = [names[layer] for layer, grad in zip(classifiers, grads, strict=True)
            if grad is None or not torch.isfinite(grad).all() or not torch.any(grad)]
    if dead:
        problems.append(f"the classifier {', '.join(dead)} gets no gradient")
    return "model check: " + "; ".join(problems) if problems else ""


def _train_step(model: nn.Module, example: Tensor,
                classifiers: list[nn.Module]) -> tuple[list[Tensor], list[Tensor | None]]:
    """The classifiers' inputs and their weights' gradients after one training-mode forward and
    backward pass on `example`; the model is left as it was."""
    with no_side_effects(model, example), inputs_of(classifiers) as features:
        output = model.train()(example)
        logits = next(tensors_in(output))
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        F.cross_entropy(logits.float().flatten(1), target).backward()
        grads = [_weight_grad(layer) for layer in classifiers]
    return [f for f in features if isinstance(f, Tensor)], grads


def _weight_grad(layer: nn.Module) -> Tensor | None:
    """The gradient of the layer's weight (its bias can learn without any input reaching it)."""
    weight = getattr(layer, "weight", None)
    params = [weight] if isinstance(weight, nn.Parameter) else list(layer.parameters(recurse=False))
    grads = [p.grad for p in params if p.grad is not None]
    return torch.cat([g.flatten() for g in grads]) if grads else None

