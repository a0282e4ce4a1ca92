"""PyTorch front end: a QCFS model (eager ``nn.Module`` or TorchScript archive) -> IR graph.

Two ways in, one way out. An eager module is traced with ``torch.fx``; a TorchScript module is
read from its TorchScript graph (``prim::CallMethod`` on submodules). Both walks hand the same
events (a layer module was called, a tensor function ran) to one ``_GraphBuilder``, and every
layer module becomes IR through the kind registry (``kind_for_module`` + ``from_torch``), so
the two paths cannot drift apart and no layer type is special-cased here.

A TorchScript submodule is not an eager module: ``torch.jit.script`` keeps a layer's constants
as attributes, ``torch.jit.trace`` keeps only parameters and buffers and bakes the rest into
the graph. each kind's ``from_script`` rebuilds the eager module (from the attributes, else from the
traced op's constant arguments), and every rebuilt module is checked against the archive's own
submodule on random data before the import is accepted.

User mistakes never surface as tracebacks: each unsupported op is collected with its module
path and a hint, and all of them are reported at once as an ``UnsupportedOpsError``.
"""
from __future__ import annotations

import enum
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch import nn

from mtdeploy.errors import InputError, UnsupportedOpsError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import KINDS, kind_for_module, kind_of
from mtdeploy.kinds.common import ScriptConfigError

TORCHSCRIPT_HOWTO = "torch.jit.trace(model.eval(), example_input).save(path)"

# Modules that compute the identity at inference time; the front end drops them.
_IDENTITY_MODULES: tuple[type[nn.Module], ...] = (
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
    **dict.fromkeys(["maxpool1d", "maxpool2d", "maxpool3d", "adaptivemaxpool2d",
                     "maxpool2dwithindices", "adaptivemaxpool2dwithindices"],
                    "replace with AvgPool2d (QCFS models use average pooling)"),
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
            + ", flatten/view(batch, -1), residual add, Dropout/Identity (dropped)")


# ---------------------------------------------------------------------------------- loading ----

def load_torch_model(path, trust_pickle: bool = False) -> nn.Module:
    """Load a ``.pt`` model: a TorchScript archive, or (only if trusted) a pickled ``nn.Module``.

    TorchScript is preferred because loading it runs no Python code from the file; unpickling a
    ``torch.save``'d module does, so it needs ``trust_pickle=True``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        if _is_torchscript_archive(path):
            raise InputError(f"{path}: TorchScript archive that cannot be loaded "
                             f"({_first_line(exc)})") from None
        # not TorchScript: try the pickle formats
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the class it refused when the file is a valid pickle
        # of Python objects (a module); anything else means the bytes are not a pickle at all.
        if not re.search(r"[Uu]nsupported (class|global)|instantiate unsupported", str(exc)):
            raise InputError(f"{path}: not a PyTorch model file, or corrupt "
                             f"({str(exc).rsplit(':', 1)[-1].strip()})") from None
        return _load_trusted_pickle(path, trust_pickle)
    except Exception as exc:
        raise InputError(f"{path}: not a PyTorch model file, or corrupt "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    raise InputError(_no_architecture_message(path, obj))


def stored_input_shape(path) -> tuple[int, ...] | None:
    """The input shape recorded by :func:`mtdeploy.nn.save_traced` in a TorchScript archive's
    ``mtdeploy.json``, or None (another file, or a model saved some other way). Read straight
    from the zip, so nothing in the file runs."""
    from mtdeploy.nn import MODEL_META_FILE

    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"/extra/{MODEL_META_FILE}")]
            if not names:
                return None
            meta = json.loads(zf.read(names[0]))
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    shape = meta.get("input_shape") if isinstance(meta, dict) else None
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise InputError(f"{path}: {MODEL_META_FILE} holds no valid input_shape ({shape!r}); "
                         "pass --input-shape")
    return tuple(shape)


def _is_torchscript_archive(path: Path) -> bool:
    """A zip holding TorchScript code (``torch.save`` zips hold only ``data.pkl`` and tensors)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)
    except (zipfile.BadZipFile, OSError):
        return False


def _load_trusted_pickle(path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise InputError(
            f"{path} is a pickled nn.Module (torch.save(model)); unpickling it runs Python code "
            f"from the file, so it is refused by default. Either re-save the model as TorchScript "
            f"({TORCHSCRIPT_HOWTO}) or, if you trust the file, pass --trust-pickle "
            f"(trust_pickle=True).")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise InputError(
            f"{path}: the pickle refers to code that cannot be imported here ({_first_line(exc)}); "
            f"make the model's class importable, or re-save as TorchScript ({TORCHSCRIPT_HOWTO})"
        ) from None
    except Exception as exc:
        raise InputError(f"{path}: cannot unpickle "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(obj, nn.Module):
        raise InputError(_no_architecture_message(path, obj))
    return obj


def _no_architecture_message(path: Path, obj: Any) -> str:
    what = "a state_dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    return (f"{path} holds {what}, not a model: weights alone have no architecture. Save the "
            f"model itself, preferably as TorchScript ({TORCHSCRIPT_HOWTO})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_input_shape(shape) -> tuple[int, ...]:
    """'1,28,28' or (1, 28, 28) -> (1, 28, 28): one sample, no batch axis: CHW, CL or (features,)."""
    if isinstance(shape, str):
        parts = [p for p in shape.replace("x", ",").split(",") if p.strip()]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"input shape {shape!r}: expected integers like 1,28,28") from None
    else:
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise InputError(f"input shape {shape!r}: expected a sequence of integers") from None
    if len(dims) not in (1, 2, 3) or min(dims, default=0) < 1:
        raise InputError(f"input shape {dims}: expected C,H,W (images), C,L (signals) or F "
                         "(vectors), positive, without the batch axis")
    return dims


# ------------------------------------------------------------------------- building the IR ----

class _Special(enum.Enum):
    POISON = "value computed by an unsupported op"
    BATCH = "the batch size"
    SHAPE = "a tensor's shape"


@dataclass(frozen=True)
class _Ref:
    """A tensor produced by IR node ``node``."""

    node: str


@dataclass(frozen=True)
class _DirectParameter:
    """A parameter or buffer used directly in forward (not through a layer module)."""

    target: str


@dataclass
class _ModuleRef:
    """A TorchScript submodule seen through a ``prim::GetAttr`` chain."""

    path: str
    module: torch.jit.ScriptModule


def _any_poison(values) -> bool:
    return any(v is _Special.POISON or (isinstance(v, (list, tuple)) and _any_poison(v))
               for v in values)


class _GraphBuilder:
    """Turns the walkers' events into IR nodes; collects unsupported ops instead of stopping."""

    def __init__(self, name: str, input_shape: tuple[int, ...]):
        self.graph = Graph(name)
        self.offenders: list[tuple[str, str, str]] = []
        self.flatten_sizes: dict[str, int] = {}            # view(-1, N): N checked after shapes
        # node -> (TorchScript submodule, its method that was called, the eager rebuild)
        self.rebuilt: dict[str, tuple[torch.jit.ScriptModule, str, nn.Module]] = {}
        self.graph.add(Node("input", "input", [], {"shape": list(input_shape)},
                            shape=tuple(input_shape), origin="input"))
        self.input = _Ref("input")

    def unsupported(self, path: str, op: str, hint: str | None = None) -> _Special:
        self.offenders.append((path or "(top-level forward)", op,
                               _hint(op) if hint is None else hint))
        return _Special.POISON

    def add_node(self, base: str, kind: str, inputs: list[_Ref], origin: str,
                 attrs=None, params=None) -> _Ref:
        name = self.graph.unique_name(base)
        self.graph.add(Node(name, kind, [r.node for r in inputs], attrs or {}, params or {},
                            origin=origin))
        return _Ref(name)

    # ---- layer modules ------------------------------------------------------------------
    def call_module(self, path: str, module: nn.Module, args, kwargs) -> Any:
        """A leaf module call (eager, or rebuilt from TorchScript by the caller)."""
        op = type(module).__name__
        if isinstance(module, _IDENTITY_MODULES):
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
        if _any_poison(args):
            return _Special.POISON
        if len(args) != 1 or kwargs or not isinstance(args[0], _Ref):
            return self.unsupported(path, op, "a layer must be called on exactly one tensor")
        return self.add_node(path or op.lower(), kind.name, [args[0]], path or op, attrs, params)

    # ---- tensor functions (the same for fx and TorchScript, keyed by _op_key) ------------
    def call_function(self, scope: str, op: str, args: Sequence, kwargs: dict) -> Any:
        handler = _FUNCTION_HANDLERS.get(_op_key(op))
        if handler is None:
            return self.unsupported(scope, op)
        if _any_poison(args) or _any_poison(kwargs.values()):
            return _Special.POISON
        return handler(self, scope, op, list(args), dict(kwargs))

    def node_base(self, scope: str, base: str) -> str:
        return f"{scope}.{base}" if scope else base

    # ---- finishing --------------------------------------------------------------------------
    def finish(self, output: Any, frontend: str) -> Graph:
        if self.offenders:
            raise UnsupportedOpsError(self.offenders)
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if not isinstance(output, _Ref):
            raise InputError("the model must return a single tensor (the logits); it returns "
                             f"{_describe(output)}")
        graph = self.graph
        graph.output = output.node
        _prune_unused(graph)
        self._infer_shapes_and_check()
        graph.meta["frontend"] = frontend
        graph.validate()
        return graph

    def _infer_shapes_and_check(self) -> None:
        """``Graph.infer_shapes``, node by node, so that whatever fails names its layer.

        Per node, in order: the kind's shape rule (a wrong input shape fails at the first layer
        it does not fit), an explicit ``view(-1, N)`` size, and, for modules rebuilt from
        TorchScript, a comparison with the archive's own submodule.
        """
        graph = self.graph
        for node in graph:
            in_shapes = [graph[i].shape for i in node.inputs]
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
                                 f"{tuple(graph.input.shape)} is too small for this layer")
            node.shape = shape
            features = self.flatten_sizes.get(node.name)
            if features is not None and shape != (features,):
                raise InputError(f"{node.label()}: reshapes to (batch, {features}) but its input "
                                 f"{in_shapes[0]} has {shape[0]} values per sample; check the "
                                 "input shape")
            if node.name in self.rebuilt:
                self._check_rebuilt(node, in_shapes[0])

    def _check_rebuilt(self, node: Node, in_shape: tuple[int, ...]) -> None:
        """A module rebuilt from TorchScript must compute what the archive's submodule computes."""
        archive, method, eager = self.rebuilt[node.name]
        x = torch.randn((2, *in_shape), generator=torch.Generator().manual_seed(0)) * 2.0
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


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{len(value)} values"
    if isinstance(value, _Special):
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


def _handle_add(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    x, y = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    alpha = _arg(args, kwargs, 2, "alpha", 1)
    if not (isinstance(x, _Ref) and isinstance(y, _Ref)):
        return b.unsupported(scope, op, "only tensor + tensor (a residual add) is supported; fold "
                                        "constant offsets into the preceding layer's bias")
    if alpha != 1:
        return b.unsupported(scope, op, f"add with alpha={alpha} is not supported")
    return b.add_node(b.node_base(scope, "add"), "add", [x, y], b.node_base(scope, op))


def _handle_flatten(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    x = _arg(args, kwargs, 0, "input")
    start, end = _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1)
    if not isinstance(x, _Ref) or start != 1 or end != -1:
        return b.unsupported(scope, f"{op}(start_dim={start}, end_dim={end})",
                             "only torch.flatten(x, 1) (all axes but the batch) is supported")
    return b.add_node(b.node_base(scope, "flatten"), "flatten", [x], b.node_base(scope, op))


def _handle_view(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    """x.view(x.size(0), -1), x.view(-1, N), x.reshape(B, N): a flatten to (batch, features)."""
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    dims = list(args[1:]) or list(kwargs.get("shape", kwargs.get("size", ())))
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = list(dims[0])
    batch_ok = len(dims) == 2 and (dims[0] is _Special.BATCH or dims[0] == -1)
    features = dims[1] if len(dims) == 2 else None
    if (not isinstance(x, _Ref) or not batch_ok or not isinstance(features, int)
            or (dims[0] == -1 and features == -1) or (features < 1 and features != -1)):
        shown = ", ".join("batch" if d is _Special.BATCH else str(d) for d in dims)
        return b.unsupported(scope, f"{op}({shown})",
                             "only reshapes that flatten to (batch, features) are supported, "
                             "e.g. x.view(x.size(0), -1) or torch.flatten(x, 1)")
    ref = b.add_node(b.node_base(scope, "flatten"), "flatten", [x], b.node_base(scope, op))
    if features != -1:
        b.flatten_sizes[ref.node] = features
    return ref


def _handle_size(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None:
        return _Special.SHAPE
    if dim == 0:
        return _Special.BATCH
    return b.unsupported(scope, f"{op}(dim={dim})",
                         "shape arithmetic other than reading the batch size is not supported")


def _handle_getattr(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    if len(args) == 2 and isinstance(args[0], _Ref) and args[1] == "shape":
        return _Special.SHAPE
    return b.unsupported(scope, f"getattr(tensor, {args[1]!r})" if len(args) > 1 else op)


def _handle_getitem(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    if len(args) == 2 and args[0] is _Special.SHAPE and args[1] == 0:
        return _Special.BATCH
    return b.unsupported(scope, "indexing/slicing", "indexing tensors or shapes (other than "
                                                    "x.shape[0]) is not supported")


def _handle_passthrough(b: _GraphBuilder, scope: str, op: str, args: list, kwargs: dict):
    """Ops that are the identity on our values: dropout, memory layout, int/tensor casts."""
    return args[0] if args else kwargs.get("input")


_FUNCTION_HANDLERS: dict[str, Callable] = {
    **dict.fromkeys(["add", "iadd"], _handle_add),
    "flatten": _handle_flatten,
    **dict.fromkeys(["view", "reshape"], _handle_view),
    "size": _handle_size,
    "getattr": _handle_getattr,
    "getitem": _handle_getitem,
    # dropout in eval mode, layout/cast no-ops, and TorchScript's int <-> tensor conversions
    **dict.fromkeys(["dropout", "featuredropout", "alphadropout", "featurealphadropout",
                     "dropout1d", "dropout2d", "dropout3d", "contiguous", "int", "numtotensor",
                     "scalarimplicit"], _handle_passthrough),
}


# ---------------------------------------------------------------------------- fx (eager) ----

class _LeafTracer(torch.fx.Tracer):
    """Stops at every module the registry maps (QCFS included) and at every torch.nn layer."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (kind_for_module(m) is not None or isinstance(m, _IDENTITY_MODULES)
                or super().is_leaf_module(m, module_qualified_name))


def _fx_scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def _fx_function_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def _import_fx(model: nn.Module, builder: _GraphBuilder) -> Any:
    tracer = _LeafTracer()
    if tracer.is_leaf_module(model, ""):
        return builder.call_module("", model, [builder.input], {})
    try:
        fx_graph = tracer.trace(model)
    except Exception as exc:
        raise InputError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{_first_line(exc)}). Models whose forward branches on tensor values or shapes cannot "
            f"be traced symbolically; save the model as TorchScript ({TORCHSCRIPT_HOWTO}) and "
            f"pass the .pt file instead") from None
    modules = dict(model.named_modules())
    env: dict[torch.fx.Node, Any] = {}
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputError(f"{type(model).__name__}.forward takes {len(placeholders)} inputs; "
                         "mtdeploy supports models with exactly one input tensor")
    output: Any = None
    for node in fx_graph.nodes:
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            env[node] = builder.input
        elif node.op == "call_module":
            env[node] = builder.call_module(node.target, modules[node.target], args, kwargs)
        elif node.op == "call_function":
            env[node] = builder.call_function(_fx_scope(node), _fx_function_name(node.target),
                                              args, kwargs)
        elif node.op == "call_method":
            env[node] = builder.call_function(_fx_scope(node), node.target, args, kwargs)
        elif node.op == "get_attr":
            env[node] = _DirectParameter(node.target)
        elif node.op == "output":
            output = args[0]
    return output


# ------------------------------------------------------------------------------ TorchScript ----

def _script_class_name(module: torch.jit.ScriptModule) -> str:
    """'__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d' -> the Python class path
    'torch.nn.modules.conv.Conv2d' (TorchScript mangles names of re-compiled classes)."""
    qualified = module._c._type().qualified_name()
    parts = [p for p in qualified.split(".")
             if p != "__torch__" and not p.startswith("___torch_mangle")]
    return ".".join(parts)


def _script_types() -> dict[str, tuple[type, Any]]:
    """Qualified class name -> (eager class, its kind or None), for every torch type the
    registry maps plus the identity modules (which need no rebuild)."""
    types = [(cls, kind) for kind in KINDS.values() for cls in kind.torch_types]
    types += [(cls, None) for cls in _IDENTITY_MODULES]
    return {f"{cls.__module__}.{cls.__qualname__}": (cls, kind) for cls, kind in types}


_CONTAINER_MODULES = ("Sequential", "ModuleList", "ModuleDict")


class _ScriptWalker:
    def __init__(self, builder: _GraphBuilder):
        self.builder = builder
        self.types = _script_types()

    def call(self, ref: _ModuleRef, method: str, args: list) -> Any:
        """A call ``ref.method(*args)``: a layer, a dropped module, an offender, or a container."""
        b = self.builder
        class_name = _script_class_name(ref.module)
        short = class_name.rsplit(".", 1)[-1]
        # torch.jit.trace names the k-th extra call of a module forward1, forward2, ...
        if class_name in self.types and method.startswith("forward"):
            cls, kind = self.types[class_name]
            if kind is None:
                return b.call_module(ref.path, cls(), args, {})
            try:
                eager = kind.from_script(ref.module)
            except InputError as exc:
                return b.unsupported(ref.path, short, str(exc))
            except (ScriptConfigError, RuntimeError, TypeError, ValueError) as exc:
                return b.unsupported(ref.path, short, f"cannot read its configuration from the "
                                                      f"TorchScript archive: {_first_line(exc)}")
            out = b.call_module(ref.path, eager, args, {})
            if isinstance(out, _Ref):
                b.rebuilt[out.node] = (ref.module, method, eager)
            return out
        if class_name.startswith("torch.nn.") and short not in _CONTAINER_MODULES:
            return b.unsupported(ref.path, short)
        outputs = self.walk(ref, ref.module._c._get_method(method).graph, args)
        return outputs[0] if len(outputs) == 1 else outputs

    def walk(self, ref: _ModuleRef, graph: torch._C.Graph, args: list) -> list:
        b = self.builder
        graph_inputs = list(graph.inputs())
        env: dict[torch._C.Value, Any] = {graph_inputs[0]: ref}
        if len(graph_inputs) - 1 != len(args):
            raise InputError(f"{ref.path or _script_class_name(ref.module)}.forward takes "
                             f"{len(graph_inputs) - 1} inputs; mtdeploy supports exactly one")
        env.update(zip(graph_inputs[1:], args))
        for node in graph.nodes():
            kind = node.kind()
            ins = [env.get(v, _Special.POISON) for v in node.inputs()]
            outs = list(node.outputs())
            if kind == "prim::Constant":
                result: Any = outs[0].toIValue() if outs else None
            elif kind == "prim::GetAttr":
                result = self._get_attr(ref, ins[0], node.s("name"))
            elif kind == "prim::CallMethod":
                target = ins[0]
                if not isinstance(target, _ModuleRef):
                    result = b.unsupported(ref.path, f"call of {node.s('name')} on a non-module")
                else:
                    result = self.call(target, node.s("name"), ins[1:])
            elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
                result = list(ins)
            elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
                seq = ins[0]
                result = list(seq) if isinstance(seq, list) and len(seq) == len(outs) \
                    else [_Special.POISON] * len(outs)
            elif kind in ("prim::If", "prim::Loop"):
                result = b.unsupported(ref.path, kind)
            elif kind.startswith("aten::") or kind in ("prim::NumToTensor",):
                result = b.call_function(ref.path, kind, ins, {})
            else:
                result = b.unsupported(ref.path, kind)
            if len(outs) == 1:
                env[outs[0]] = result
            elif isinstance(result, list) and len(result) == len(outs):
                env.update(zip(outs, result))
            else:
                env.update((o, _Special.POISON) for o in outs)
        return [env.get(v, _Special.POISON) for v in graph.outputs()]

    def _get_attr(self, ref: _ModuleRef, owner: Any, name: str) -> Any:
        if not isinstance(owner, _ModuleRef):
            return self.builder.unsupported(ref.path, f"attribute {name!r} of a non-module object")
        child = getattr(owner.module, name)
        path = f"{owner.path}.{name}" if owner.path else name
        if isinstance(child, torch.jit.ScriptModule):
            return _ModuleRef(path, child)
        return _DirectParameter(path)


def _import_script(model: torch.jit.ScriptModule, builder: _GraphBuilder) -> Any:
    return _ScriptWalker(builder).call(_ModuleRef("", model), "forward", [builder.input])


# ------------------------------------------------------------------------------ entry point ----

def import_torch(model: nn.Module, input_shape, name: str | None = None) -> Graph:
    """Build the IR of ``model`` (eager or TorchScript) for one sample of ``input_shape``.

    Node names are the module paths (``features.0``), function ops are named after their op
    within the enclosing module (``layer1.add``). BatchNorm nodes stay; ``fold_batchnorm``
    removes them. Raises ``UnsupportedOpsError`` listing every op that cannot be mapped.
    """
    shape = parse_input_shape(input_shape)
    if isinstance(model, torch.jit.ScriptModule):
        default_name, walker, frontend = model.original_name, _import_script, "torchscript"
    elif isinstance(model, nn.Module):
        default_name, walker, frontend = type(model).__name__, _import_fx, "torch.fx"
    else:
        raise InputError(f"expected a torch nn.Module or TorchScript module, got "
                         f"{type(model).__name__}")
    builder = _GraphBuilder(name or default_name, shape)
    output = walker(model, builder)
    return builder.finish(output, frontend)

