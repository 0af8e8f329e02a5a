"""One forward pass, observed: which tensor each torch call made from which, inside which module.

The model-side tricks need facts that a module's class does not tell: which dimension a norm
normalizes and how many positions it sees (a 1x1 map after pooling), which layer makes the logits
and whether a Dropout feeds it, which norm closes a residual branch. `trace` runs the model once,
in eval mode and without gradients, on a small example batch, and records:

- a dataflow graph: every tensor an op returns is a node whose parents are the op's tensor inputs
  (an op that returns one of its inputs, in place or not, makes a new node for it, so in-place
  `relu_`/`+=` chains stay in order); nodes that derive from the example are "data" nodes;
- every module call: the module, its input and output nodes and input shapes;
- every addition of two same-shape tensors (a residual is one), with, for each operand, the norm
  whose weight, set to 0, makes that operand exactly 0 (see `zero_sources`);
- how many activation functions ran.

Why this way: torch.fx symbolic tracing fails on much of timm and torchvision (input-size
asserts, data-dependent shapes), torch.export is slow and strict, and class names say nothing
reliable. A `TorchFunctionMode` sees every torch call the model really makes, whatever Python
it is written in, for the price of one forward pass on a couple of images; module hooks say
which module made each tensor. Calls that escape the mode (TorchScript functions) only lose
information: an untracked tensor is a fresh node with no ancestry, never a wrong link.

Zero propagation: each norm in `zero_sources` has its weight parameter marked. Every op with a
marked input is run a second time with those inputs replaced by zeros; if its result is all
zeros, the output is marked too (with the most recently marked norm, the one nearest the op).
So a mark means "exactly zero at these parameters when that norm's weight is zero": it passes
through layer scales, drop paths, ReLU/GELU/SiLU, a convolution or linear layer without bias,
attention over zeros, and stops at anything that maps 0 elsewhere (a sigmoid, a bias).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# Names of torch functions (and Tensor methods) that are activation functions.
ACTIVATIONS = frozenset({
    "relu", "relu_", "relu6", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_",
    "softplus", "prelu", "rrelu", "glu", "hardtanh", "hardtanh_", "logsigmoid", "tanhshrink", "softsign",
})
_ADDS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})
# Ops that move or view values without computing: what may sit between a Dropout and the classifier.
VIEW_OPS = frozenset({
    "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous", "__getitem__",
    "select", "narrow", "clone", "to", "float", "type_as", "movedim", "unflatten",
})
# Tensor attribute reads and other calls that compute nothing.
_IGNORED = frozenset({"__get__", "__set__", "dim", "size", "numel", "__len__", "is_contiguous", "stride",
                      "data_ptr", "element_size", "__format__", "__repr__", "__bool__", "item", "tolist",
                      "get_device", "is_floating_point", "is_complex", "__hash__", "__eq__", "__ne__"})


@dataclass
class ModuleCall:
    module: nn.Module
    inputs: list[int]
    outputs: list[int]
    input_shapes: list[tuple[int, ...]]


@dataclass
class Addition:
    """`a + b` of two same-shape tensors; `zeroed_by[i]` is the norm whose zero weight makes
    operand i exactly zero, or None."""

    operands: tuple[int, int]
    zeroed_by: tuple[nn.Module | None, nn.Module | None]


@dataclass
class Trace:
    parents: list[tuple[int, ...]] = field(default_factory=list)  # node -> its op's tensor inputs
    is_data: list[bool] = field(default_factory=list)             # node derives from the example
    op: list[str] = field(default_factory=list)                   # the op that made it ("" for leaves)
    calls: list[ModuleCall] = field(default_factory=list)         # in the order they returned
    additions: list[Addition] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)              # the model's output nodes
    activations: int = 0                                          # activation function calls
    result: Any = None                                            # what the model returned

    def ancestors(self, node: int) -> set[int]:
        """The data nodes `node` derives from, itself included."""
        seen: set[int] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if n in seen or not self.is_data[n]:
                continue
            seen.add(n)
            stack.extend(self.parents[n])
        return seen

    def calls_of(self, module: nn.Module) -> list[ModuleCall]:
        return [c for c in self.calls if c.module is module]

    def made_by(self) -> dict[int, list[nn.Module]]:
        """For each node, the modules that returned it (innermost first)."""
        made: dict[int, list[nn.Module]] = {}
        for call in self.calls:
            for node in call.outputs:
                made.setdefault(node, []).append(call.module)
        return made


def tensors_in(value: Any) -> Iterator[Tensor]:
    """Every tensor in a (nested) tuple, list or dict."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)


def _replace(value: Any, swap: dict[int, Tensor]) -> Any:
    """`value` with the tensors whose id is in `swap` replaced (containers rebuilt only then)."""
    if isinstance(value, Tensor):
        return swap.get(id(value), value)
    if isinstance(value, list | tuple | dict) and any(id(t) in swap for t in tensors_in(value)):
        if isinstance(value, dict):
            return {k: _replace(v, swap) for k, v in value.items()}
        items = [_replace(v, swap) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a namedtuple
    return value


class _Recorder(TorchFunctionMode):
    """Sees every torch call of the traced pass and adds its outputs to the graph (module docstring)."""

    def __init__(self, trace: Trace, marks: dict[int, nn.Module]) -> None:
        super().__init__()
        self.trace = trace
        self.node_of: dict[int, int] = {}
        self.alive: list[Tensor] = []          # keeps every seen tensor alive: ids stay unique
        self.mark: dict[int, nn.Module] = {}   # node -> the norm whose zero weight zeroes it
        self.marked_at: dict[nn.Module, int] = {}  # norm -> the node where its mark first appeared
        self.weights = marks                   # id(weight) -> its norm: marked when first seen

    def node(self, tensor: Tensor, *, data: bool = False) -> int:
        found = self.node_of.get(id(tensor))
        if found is not None:
            return found
        return self._new(tensor, (), "", data)

    def _new(self, tensor: Tensor, parents: tuple[int, ...], op: str, data: bool) -> int:
        trace = self.trace
        index = len(trace.parents)
        trace.parents.append(parents)
        trace.is_data.append(data)
        trace.op.append(op)
        self.node_of[id(tensor)] = index
        self.alive.append(tensor)
        norm = self.weights.get(id(tensor))
        if norm is not None and not parents:
            self.mark[index] = norm
            self.marked_at.setdefault(norm, index)
        return index

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _IGNORED:
            return func(*args, **kwargs)
        inputs = list(tensors_in((args, kwargs)))
        nodes = [self.node(t) for t in inputs]
        if name in _ADDS and len(args) >= 2 and isinstance(args[0], Tensor) and isinstance(args[1], Tensor) \
                and args[0].shape == args[1].shape:
            a, b = self.node(args[0]), self.node(args[1])
            self.trace.additions.append(Addition((a, b), (self.mark.get(a), self.mark.get(b))))
        if name in ACTIVATIONS:
            self.trace.activations += 1
        result = func(*args, **kwargs)
        outputs = list(tensors_in(result))
        in_place = (name.endswith("_") and not name.endswith("__")) or name in ("__setitem__", "__iadd__")
        if in_place and args and isinstance(args[0], Tensor) and all(args[0] is not o for o in outputs):
            outputs.append(args[0])  # a new value in the same tensor
        if not outputs:
            return result
        mark = self._zero_mark(func, args, kwargs, inputs, nodes)
        parents = tuple(dict.fromkeys(nodes))
        data = any(self.trace.is_data[p] for p in parents)
        for tensor in outputs:
            index = self._new(tensor, parents, name, data)
            if mark is not None:
                self.mark[index] = mark
                self.marked_at.setdefault(mark, index)
        return result

    def _zero_mark(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], inputs: list[Tensor],
                   nodes: list[int]) -> nn.Module | None:
        """The most recently marked norm among the inputs' marks whose zero makes the result all 0."""
        norms = list(dict.fromkeys(m for n in nodes if (m := self.mark.get(n)) is not None))
        norms.sort(key=lambda m: self.marked_at.get(m, len(self.trace.parents)), reverse=True)
        for norm in norms:
            swap = {id(t): torch.zeros_like(t) for t, n in zip(inputs, nodes, strict=True) if self.mark.get(n) is norm}
            if args and isinstance(args[0], Tensor) and id(args[0]) not in swap:
                swap[id(args[0])] = args[0].clone()  # an in-place op writes into its first argument
            try:
                again = func(*_replace(args, swap), **{k: _replace(v, swap) for k, v in kwargs.items() if k != "out"})
            except Exception:  # an op that refuses zeros does not pass them on
                continue
            results = list(tensors_in(again))
            if results and not any(bool(torch.any(r)) for r in results):
                return norm
        return None


def trace(model: nn.Module, example: Tensor, *, zero_sources: tuple[nn.Module, ...] = ()) -> Trace:
    """Run `model(example)` once in eval mode, without gradients, and record what happened.

    `zero_sources`: norms whose weight is marked, see the module docstring. The model's
    train/eval flags are restored afterwards; eval mode updates no running statistics.
    """
    record = Trace()
    marks = {id(m.weight): m for m in zero_sources if isinstance(getattr(m, "weight", None), Tensor)}
    recorder = _Recorder(record, marks)
    stack: list[tuple[nn.Module, list[int], list[tuple[int, ...]]]] = []

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tensors = list(tensors_in((args, kwargs)))
        stack.append((module, [recorder.node(t) for t in tensors], [tuple(t.shape) for t in tensors]))

    def after(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        called, inputs, shapes = stack.pop()
        assert called is module
        record.calls.append(ModuleCall(module, inputs, [recorder.node(t) for t in tensors_in(output)], shapes))

    modes = {m: m.training for m in model.modules()}
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        model.eval()
        recorder.node(example, data=True)
        with torch.no_grad(), recorder:
            record.result = model(example)
        record.outputs = [recorder.node(t) for t in tensors_in(record.result)]
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return record


def same_for_every_sample(x: Tensor) -> bool:
    """Whether every sample (dim 0) of `x` is the same, to float32 precision."""
    x = x.detach().float().flatten(1)
    return bool((x - x[:1]).abs().max() <= 1e-6 * (1 + x.abs().max()))


@contextlib.contextmanager
def no_side_effects(model: nn.Module, example: Tensor) -> Iterator[None]:
    """Forward and backward passes inside leave `model` as they found it: its buffers (running
    statistics), its train/eval flags and its gradients (none) restored, the random generators
    (dropout, drop path) forked, so that training afterwards goes exactly as it would have."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    devices = [example.device] if example.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for module, training in modes.items():
            module.training = training
        for param in model.parameters():
            param.grad = None


@contextlib.contextmanager
def inputs_of(layers: list[nn.Module]) -> Iterator[list[Tensor]]:
    """What `layers` receive (their first argument) in the forward passes run inside."""
    seen: list[Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda _, args: seen.append(args[0])) for layer in layers]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def input_reaches_classifier(model: nn.Module, example: Tensor, classifiers: list[nn.Module]) -> bool:
    """Whether what `classifiers` receive, in one training-mode pass, differs from sample to
    sample (a zero-initialized classifier aside, whether the output depends on the input)."""
    with no_side_effects(model, example), inputs_of(classifiers) as features, torch.no_grad():
        model.train()(example)
    return any(not same_for_every_sample(f) for f in features if isinstance(f, Tensor))
