"""The shared IR builder of the torch front end: walk events -> IR nodes, shapes, checks.

Both walkers (``torch_fx`` for eager modules, ``torch_script`` for TorchScript archives) report
the same events to one ``GraphBuilder``: a layer module was called, a tensor function ran. So
the two paths cannot drift apart: every layer module becomes IR through the kind registry
(``kind_for_module`` + ``from_torch``), tensor functions (add, flatten, view, size, getattr,
getitem, no-ops) go through one handler table, and no layer type is special-cased here.

User mistakes never surface as tracebacks: each unsupported op is collected with its module
path and a hint, and all are reported at once as an ``UnsupportedOpsError``. ``finish`` infers
shapes node by node so that a wrong input shape names its layer, and checks every module
rebuilt from TorchScript against the archive's own submodule on random data; before either, it
refuses from the shapes alone a network larger than any bundled hardware profile holds, so
that a huge input shape never reaches torch.
"""
from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from mtdeploy.errors import InputError, UnsupportedOpsError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import KINDS, kind_for_module, kind_of
from mtdeploy.targets.profiles import bundled_names, load_profile
from mtdeploy.validate import finite_params

__all__ = ["GraphBuilder", "Ref", "Special", "DirectParameter", "IDENTITY_MODULES"]

# Modules that compute the identity at inference time; the front end drops them.
IDENTITY_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout)

_QCFS_HINT = "replace with mtdeploy.nn.QCFS(levels, threshold)"
_LAYER_MODULE_HINT = ("use an nn.Conv2d / nn.Linear / nn.BatchNorm module so mtdeploy can read "
                      "its weights (functional calls and frozen TorchScript archives hide them)")
_PRODUCT_HINT = ("integrate-and-fire neurons cannot multiply two signals; fold constant scales "
                 "into the preceding conv/linear weights")
# Hints per op, keyed by a normalised name (lower case, no underscores), which is the same for a
# module class (MaxPool2d), a function (max_pool2d) and a TorchScript op (aten::max_pool2d).
_HINTS = {
    **dict.fromkeys(["maxpool1d", "maxpool3d", "adaptivemaxpool1d", "adaptivemaxpool3d",
                     "lppool1d", "lppool2d", "fractionalmaxpool2d"],
                    "replace with AvgPool2d or MaxPool2d (2-D max pooling is exact with "
                    "avg-repeat alignment)"),
    **dict.fromkeys(["maxpool2d", "adaptivemaxpool2d", "maxpool2dwithindices",
                     "adaptivemaxpool2dwithindices"],
                    "use an nn.MaxPool2d / nn.AdaptiveMaxPool2d(1) module without return_indices "
                    "(or AvgPool2d): a functional max pool's options are not read"),
    **dict.fromkeys(["relu", "relu6", "leakyrelu", "prelu", "gelu", "silu", "elu", "selu", "celu",
                     "hardtanh", "hardswish", "hardsigmoid", "mish", "softplus", "threshold",
                     "sigmoid", "tanh", "logsigmoid"], _QCFS_HINT),
    **dict.fromkeys(["floor", "clamp", "clip", "round"],
                    "write each activation as an mtdeploy.nn.QCFS module so its levels and "
                    "threshold can be read"),
    **dict.fromkeys(["softmax", "logsoftmax", "softmin"],
                    "drop the softmax from the deployed model: it does not change the argmax of "
                    "the logits; apply it to the outputs on the host if needed"),
    **dict.fromkeys(["cat", "concat", "concatenate", "stack"],
                    "concatenation is not supported; merge branches with a residual add"),
    **dict.fromkeys(["mul", "div", "truediv", "floordiv", "matmul", "bmm", "mm", "einsum"],
                    _PRODUCT_HINT),
    **dict.fromkeys(["conv2d", "convolution", "convolutionmode", "conv1d", "linear", "addmm",
                     "batchnorm", "batchnorm2d", "batchnorm1d"], _LAYER_MODULE_HINT),
    **dict.fromkeys(["layernorm", "groupnorm", "instancenorm2d", "localresponsenorm"],
                    "only BatchNorm directly after a Conv2d/Linear is supported (it is folded "
                    "into their weights)"),
    **dict.fromkeys(["convtranspose2d", "convtranspose1d", "upsample", "interpolate",
                     "upsamplenearest2d", "upsamplebilinear2d"],
                    "up-sampling layers are not supported"),
    **dict.fromkeys(["sub", "rsub", "neg"],
                    "subtraction is not supported; only residual additions (x + y) are"),
    "if": "data-dependent control flow cannot be mapped to a fixed network; remove it from forward",
    "loop": "loops cannot be mapped to a fixed network; unroll them (e.g. nn.Sequential)",
}


def _op_key(name: str) -> str:
    """'aten::max_pool2d' / 'max_pool2d' / 'MaxPool2d' / '__add__' / 'relu_' -> one lookup key."""
    return name.split("::")[-1].replace("_", "").lower()


def _hint(name: str) -> str:
    return _HINTS.get(_op_key(name), _supported_summary())


def _supported_summary() -> str:
    layers = sorted({t.__name__ for kind in KINDS.values() for t in kind.torch_types})
    return ("no spiking equivalent; supported: " + ", ".join(layers)
            + ", flatten/view(batch, -1)/squeeze to (batch, features), residual add, "
            "Dropout/Identity (dropped)")


class Special(enum.Enum):
    """Non-tensor values the walks carry: a poisoned value, the batch size, a shape."""

    POISON = "value computed by an unsupported op"
    BATCH = "the batch size"
    SHAPE = "a tensor's shape"


@dataclass(frozen=True)
class Ref:
    """A tensor produced by IR node ``node``."""

    node: str


@dataclass(frozen=True)
class DirectParameter:
    """A parameter or buffer used directly in forward (not through a layer module)."""

    target: str


def _any_poison(values) -> bool:
    return any(v is Special.POISON or (isinstance(v, (list, tuple)) and _any_poison(v))
               for v in values)


class GraphBuilder:
    """Turns the walkers' events into IR nodes; collects unsupported ops instead of stopping."""

    def __init__(self, name: str, input_shape: tuple[int, ...]):
        self.graph = Graph(name)
        self.offenders: list[tuple[str, str, str]] = []
        # flatten nodes standing for reshapes: node -> (module path, the op as written, its
        # sample-shape rule), checked once shapes are known (_check_reshapes)
        self.reshapes: dict[str, tuple[str, str, Callable]] = {}
        # node -> (TorchScript submodule, its method that was called, the eager rebuild)
        self.rebuilt: dict[str, tuple[torch.jit.ScriptModule, str, nn.Module]] = {}
        self.graph.add(Node("input", "input", [], {"shape": list(input_shape)},
                            shape=tuple(input_shape), origin="input"))
        self.input = Ref("input")

    def unsupported(self, path: str, op: str, hint: str | None = None) -> Special:
        self.offenders.append((path or "(top-level forward)", op,
                               _hint(op) if hint is None else hint))
        return Special.POISON

    def add_node(self, base: str, kind: str, inputs: list[Ref], origin: str,
                 attrs=None, params=None) -> Ref:
        name = self.graph.unique_name(base)
        self.graph.add(Node(name, kind, [r.node for r in inputs], attrs or {}, params or {},
                            origin=origin))
        return Ref(name)

    # ---- layer modules ------------------------------------------------------------------
    def call_module(self, path: str, module: nn.Module, args, kwargs) -> Any:
        """A leaf module call (eager, or rebuilt from TorchScript by the caller)."""
        op = type(module).__name__
        if isinstance(module, IDENTITY_MODULES):
            if not args and not kwargs:  # torch.jit.trace records an Identity with no inputs
                return None
            return args[0] if len(args) == 1 and not kwargs else self.unsupported(
                path, op, "called with more than one argument")
        # Report the op itself even when its input is already poisoned, so that every
        # offender is listed, not only the first on each path.
        kind = kind_for_module(module)
        if kind is None:
            return self.unsupported(path, op)
        try:
            attrs, params = kind.from_torch(module)
        except InputError as exc:
            return self.unsupported(path, op, str(exc))
        # Before anything computes with them: a NaN weight would otherwise fail the TorchScript
        # rebuild check as if the layer's type were unsupported.
        finite_params(f"{path or op} ({op})", params)
        if _any_poison(args):
            return Special.POISON
        if len(args) != 1 or kwargs or not isinstance(args[0], Ref):
            return self.unsupported(path, op, "a layer must be called on exactly one tensor")
        return self.add_node(path or op.lower(), kind.name, [args[0]], path or op, attrs, params)

    # ---- tensor functions (the same for fx and TorchScript, keyed by _op_key) ------------
    def call_function(self, scope: str, op: str, args: Sequence, kwargs: dict) -> Any:
        handler = _FUNCTION_HANDLERS.get(_op_key(op))
        if handler is None:
            return self.unsupported(scope, op)
        if _any_poison(args) or _any_poison(kwargs.values()):
            return Special.POISON
        return handler(self, scope, op, list(args), dict(kwargs))

    def node_base(self, scope: str, base: str) -> str:
        return f"{scope}.{base}" if scope else base

    # ---- finishing --------------------------------------------------------------------------
    def finish(self, output: Any, frontend: str) -> Graph:
        if self.offenders:
            raise UnsupportedOpsError(self.offenders)
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if not isinstance(output, Ref):
            raise InputError("the model must return a single tensor (the logits); it returns "
                             f"{_describe(output)}")
        graph = self.graph
        graph.output = output.node
        _prune_unused(graph)
        self._infer_shapes_and_check()
        self._check_reshapes()
        graph.meta["frontend"] = frontend
        graph.validate()
        return graph

    def _infer_shapes_and_check(self) -> None:
        """``Graph.infer_shapes``, node by node, so that whatever fails names its layer.

        First, from the shapes alone (no torch), the network's size: a huge input shape must
        not reach torch. Then per node, in order: its shape (:meth:`_shape`) and, for a module
        rebuilt from TorchScript, a comparison with the archive's own submodule (which tells
        what is wrong with a module before a later layer's shape would).
        """
        graph = self.graph
        _check_size(graph, self._shapes_until_an_error())
        for node in graph:
            in_shapes = [graph[i].shape for i in node.inputs]
            node.shape = self._shape(node, in_shapes)
            if node.name in self.rebuilt:
                self._check_rebuilt(node, in_shapes[0])

    def _shapes_until_an_error(self) -> dict[str, tuple[int, ...]]:
        """Each node's shape, in order, up to the first node whose shape fails."""
        shapes: dict[str, tuple[int, ...]] = {}
        for node in self.graph:
            try:
                shapes[node.name] = self._shape(node, [shapes[i] for i in node.inputs])
            except InputError:
                break
        return shapes

    def _shape(self, node: Node, in_shapes: list) -> tuple[int, ...]:
        """The kind's shape rule (a wrong input shape fails at the first layer it does not
        fit); reshapes are checked once all shapes are known (:meth:`_check_reshapes`)."""
        try:
            shape = tuple(int(d) for d in kind_of(node).infer_shape(node, in_shapes))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{node.label()}: cannot take an input of shape "
                             f"{in_shapes[0] if len(in_shapes) == 1 else in_shapes} "
                             f"({type(exc).__name__}: {exc}); check the input shape") from None
        if shape and min(shape) < 1:
            raise InputError(f"{node.label()}: output shape {shape} is empty; the input "
                             f"{tuple(self.graph.input.shape)} is too small for this layer")
        return shape

    def _check_reshapes(self) -> None:
        """Each reshape (view, reshape, flatten, squeeze) became a flatten node; with the input
        shapes known, replay it on the sample shape as torch computes it. What leaves a chain
        of reshapes for any other layer must be (batch, features): a pure flatten; the rest is
        listed as unsupported, naming the layer."""
        graph, torch_shape, problems = self.graph, {}, []
        for node in graph:
            if node.name not in self.reshapes:
                continue
            path, op, rule = self.reshapes[node.name]
            src = node.inputs[0]
            in_shape = torch_shape.get(src, tuple(graph[src].shape))
            out = torch_shape[node.name] = rule(in_shape, node)
            users = [c.origin or c.name for c in graph.consumers(node.name)
                     if c.name not in self.reshapes]
            if (users or node.name == graph.output) and len(out) != 1:
                shown = ", ".join(str(d) for d in out)
                feeds = f" before {', '.join(users)}" if users else " (the output)"
                problems.append((path or "(top-level forward)", op,
                                 f"it gives (batch, {shown}) from (batch, "
                                 f"{', '.join(map(str, in_shape))}){feeds}; " + _FLATTEN_ONLY))
        if problems:
            raise UnsupportedOpsError(problems)

    def _check_rebuilt(self, node: Node, in_shape: tuple[int, ...]) -> None:
        """A module rebuilt from TorchScript must compute what the archive's submodule computes.

        A shift-invariant kind (conv, pool, element-wise) is compared on a crop of its input
        map (borders, strides and padding modes show at any size): at ImageNet sizes the full
        map made this check the slowest step of the import."""
        archive, method, eager = self.rebuilt[node.name]
        x = torch.randn((2, *_check_shape(node, in_shape)),
                        generator=torch.Generator().manual_seed(0)) * 2.0
        was_training = archive.training
        archive.train(False)  # a scripted BN in training mode would use and update batch stats
        try:
            with torch.no_grad():
                expected, got = archive._c._get_method(method)(x), eager.eval()(x)
        finally:
            archive.train(was_training)
        if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
            raise InputError(
                f"{node.label()}: the TorchScript submodule does not behave like a standard "
                f"{type(eager).__name__} (custom forward, or an option such as padding_mode "
                f"that mtdeploy does not support)")


#: spatial size (per dim) at which shift-invariant rebuilt modules are checked
_CHECK_CROP = 24


def _check_shape(node: Node, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape a rebuilt module is checked on: ``in_shape``, its spatial dims cropped
    to ``_CHECK_CROP`` for a shift-invariant kind whose shape rule accepts the crop."""
    kind = kind_of(node)
    cropped = (in_shape[0], *(min(d, _CHECK_CROP) for d in in_shape[1:]))
    if not kind.shift_invariant or cropped == tuple(in_shape):
        return tuple(in_shape)
    try:
        shape = kind.infer_shape(node, [cropped])
    except Exception:   # e.g. a kernel larger than the crop: check at full size
        return tuple(in_shape)
    return cropped if shape and min(shape) >= 1 else tuple(in_shape)


@functools.lru_cache(maxsize=1)
def largest_profile() -> tuple[str, int]:
    """(name, neurons) of the bundled hardware profile that holds the most neurons."""
    return max(((name, load_profile(name).total_neurons) for name in bundled_names()),
               key=lambda named: named[1])


def _check_size(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse, from ``shapes`` alone, a network with more neurons (activations and output)
    than the largest bundled profile holds: such an input shape is a mistake, and checking
    it with torch would allocate memory in proportion."""
    neurons = sum(math.prod(shapes[node.name]) for node in graph if node.name in shapes and (
        kind_of(node).role == "activation" or node.name == graph.output))
    name, limit = largest_profile()
    if neurons > limit:
        counted = "" if len(shapes) == len(graph) else "at least "   # up to a shape error
        raise InputError(f"with input shape {tuple(graph.input.shape)} the network has "
                         f"{counted}{neurons:,} neurons, more than the largest hardware profile "
                         f"({name}, {limit:,}) holds; check the input shape")


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{len(value)} values"
    if isinstance(value, Special):
        return value.value
    return type(value).__name__


def _prune_unused(graph: Graph) -> None:
    """Drop nodes that do not reach the output (e.g. an unused auxiliary head)."""
    live, stack = {graph.input.name}, [graph.output]
    while stack:
        name = stack.pop()
        if name not in live:
            live.add(name)
            stack.extend(graph[name].inputs)
    graph.nodes = {n: node for n, node in graph.nodes.items() if n in live}


# ---- function handlers --------------------------------------------------------------------

def _arg(args: list, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _handle_add(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    x, y = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    alpha = _arg(args, kwargs, 2, "alpha", 1)
    if not (isinstance(x, Ref) and isinstance(y, Ref)):
        return b.unsupported(scope, op, "only tensor + tensor (a residual add) is supported; fold "
                                        "constant offsets into the preceding layer's bias")
    if alpha != 1:
        return b.unsupported(scope, op, f"add with alpha={alpha} is not supported")
    return b.add_node(b.node_base(scope, "add"), "add", [x, y], b.node_base(scope, op))


_FLATTEN_ONLY = ("only reshapes that flatten to (batch, features) are supported, e.g. "
                 "x.view(x.size(0), -1), torch.flatten(x, 1) or x.squeeze() of a (C, 1, 1) map")


def _reshape_node(b: GraphBuilder, scope: str, op: str, x: Ref, rule) -> Ref:
    """A flatten node for a reshape whose torch sample shape ``rule(in_shape, node)`` gives;
    :meth:`GraphBuilder._check_reshapes` requires the chain to end in a pure flatten."""
    ref = b.add_node(b.node_base(scope, "flatten"), "flatten", [x],
                     b.node_base(scope, op.split("(")[0]))
    b.reshapes[ref.node] = (scope, op, rule)
    return ref


def _batch_axis(dim: int, ndim: int) -> int:
    """A torch axis of a (batch, *sample) tensor as an axis of the sample, -1 for the batch."""
    return (dim % (ndim + 1)) - 1 if -ndim - 1 <= dim <= ndim else -2


def _handle_flatten(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    """torch.flatten(x, start_dim, end_dim) with start_dim past the batch axis."""
    x = _arg(args, kwargs, 0, "input")
    start, end = _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1)
    if not isinstance(x, Ref) or not isinstance(start, int) or not isinstance(end, int) \
            or start == 0:
        return b.unsupported(scope, f"{op}(start_dim={start}, end_dim={end})",
                             "only flattening the axes after the batch is supported, e.g. "
                             "torch.flatten(x, 1)")

    def rule(shape, node):
        a, z = _batch_axis(start, len(shape)), _batch_axis(end, len(shape))
        if a < 0 or z < a:
            raise UnsupportedOpsError([(scope or "(top-level forward)",
                                        f"{op}(start_dim={start}, end_dim={end})",
                                        "it flattens the batch axis; " + _FLATTEN_ONLY)])
        return (*shape[:a], int(np.prod(shape[a:z + 1])), *shape[z + 1:])

    return _reshape_node(b, scope, f"{op}(start_dim={start}, end_dim={end})", x, rule)


def _handle_squeeze(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    """x.squeeze(), x.squeeze(dim), torch.squeeze(x, dims): unit axes of the sample removed."""
    x = _arg(args, kwargs, 0, "input")
    dims = _arg(args, kwargs, 1, "dim")
    dims = None if dims is None else list(dims) if isinstance(dims, (list, tuple)) else [dims]
    if not isinstance(x, Ref) or (dims is not None and not all(isinstance(d, int) for d in dims)):
        return b.unsupported(scope, op, _FLATTEN_ONLY)
    text = f"{op}({', '.join(map(str, dims or []))})"

    def rule(shape, node):
        axes = [_batch_axis(d, len(shape)) for d in dims] if dims is not None \
            else list(range(len(shape)))
        if any(a < 0 for a in axes):
            raise UnsupportedOpsError([(scope or "(top-level forward)", text,
                                        "it squeezes the batch axis; " + _FLATTEN_ONLY)])
        return tuple(n for i, n in enumerate(shape) if not (i in axes and n == 1))

    return _reshape_node(b, scope, text, x, rule)


def _handle_view(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    """x.view(x.size(0), -1), x.view(-1, N), x.reshape(B, N), x.view(B, C, -1): the batch axis
    kept, the sample re-laid out (a flatten in the end, see _check_reshapes)."""
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    dims = list(args[1:]) or list(kwargs.get("shape", kwargs.get("size", ())))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    shown = ", ".join("batch" if d is Special.BATCH else str(d) for d in dims)
    sample = dims[1:]
    if (not isinstance(x, Ref) or len(dims) < 2 or not (dims[0] is Special.BATCH or dims[0] == -1)
            or not all(isinstance(d, int) and (d >= 1 or d == -1) for d in sample)
            or sample.count(-1) > (0 if dims[0] == -1 else 1)):
        return b.unsupported(scope, f"{op}({shown})", _FLATTEN_ONLY)

    def rule(shape, node):
        total = int(np.prod(shape))
        known = int(np.prod([d for d in sample if d != -1]))
        out = tuple(total // known if d == -1 else d for d in sample)
        if int(np.prod(out)) != total:
            raise InputError(f"{node.label()}: reshapes to (batch, {shown.split(', ', 1)[1]}) "
                             f"but its input {shape} has {total} values per sample; check the "
                             "input shape")
        return out

    return _reshape_node(b, scope, f"{op}({shown})", x, rule)


def _handle_size(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None:
        return Special.SHAPE
    if dim == 0:
        return Special.BATCH
    return b.unsupported(scope, f"{op}(dim={dim})",
                         "shape arithmetic other than reading the batch size is not supported")


def _handle_getattr(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    if len(args) == 2 and isinstance(args[0], Ref) and args[1] == "shape":
        return Special.SHAPE
    return b.unsupported(scope, f"getattr(tensor, {args[1]!r})" if len(args) > 1 else op)


def _handle_getitem(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    if len(args) == 2 and args[0] is Special.SHAPE and args[1] == 0:
        return Special.BATCH
    return b.unsupported(scope, "indexing/slicing", "indexing tensors or shapes (other than "
                                                    "x.shape[0]) is not supported")


def _handle_passthrough(b: GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    """Ops that are the identity on our values: dropout, memory layout, int/tensor casts."""
    return args[0] if args else kwargs.get("input")


_FUNCTION_HANDLERS: dict[str, Callable] = {
    **dict.fromkeys(["add", "iadd"], _handle_add),
    "flatten": _handle_flatten,
    **dict.fromkeys(["view", "reshape"], _handle_view),
    "squeeze": _handle_squeeze,
    "size": _handle_size,
    "getattr": _handle_getattr,
    "getitem": _handle_getitem,
    # dropout in eval mode, layout/cast no-ops, and TorchScript's int <-> tensor conversions
    **dict.fromkeys(["dropout", "featuredropout", "alphadropout", "featurealphadropout",
                     "dropout1d", "dropout2d", "dropout3d", "contiguous", "int", "numtotensor",
                     "scalarimplicit"], _handle_passthrough),
}

