"""The registry of node kinds: one entry per kind, the single source of truth for what it means.

A kind entry says how to build it from a torch module (``torch_types`` + ``from_torch``), its
shape rule, its float semantics (``forward``, batch-first torch), its role in the SNN
(``role``: ``source``, ``linear`` synaptic op, ``activation`` = spiking population, ``timing``
= temporal alignment), and whether it carries a weight that fixed-point quantization scales
(``weighted``). Backends (simulator, Lava, NetX, budget rules) ask the entry, never switch on
kind names.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node

KINDS: dict[str, "NodeKind"] = {}


def register(cls: type["NodeKind"]) -> type["NodeKind"]:
    if cls.name in KINDS:
        raise ValueError(f"node kind {cls.name!r} registered twice")
    KINDS[cls.name] = cls()
    return cls


def kind_of(node: Node) -> "NodeKind":
    try:
        return KINDS[node.kind]
    except KeyError:
        raise InputError(f"node {node.name}: unknown kind {node.kind!r}") from None


def kind_for_module(module: nn.Module) -> "NodeKind | None":
    for kind in KINDS.values():
        if kind.torch_types and isinstance(module, kind.torch_types):
            return kind
    return None


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _np(t: torch.Tensor | None, like_shape=None) -> np.ndarray:
    if t is None:
        return np.zeros(like_shape, dtype=np.float32)
    return t.detach().cpu().numpy().astype(np.float32).copy()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def dims3(shape) -> tuple[int, int, int]:
    """A shape as (C, H, W) for the budget model; a vector (N,) is (N, 1, 1)."""
    shape = tuple(int(s) for s in shape)
    return shape if len(shape) == 3 else (int(np.prod(shape)), 1, 1)


def _window(lo, hi, k, s, p, d, n):
    """Input interval [lo', hi') read by output positions [lo, hi) of a sliding window."""
    new_lo = np.clip(lo * s - p, 0, n)
    new_hi = np.clip((hi - 1) * s - p + d * (k - 1) + 1, 0, n)
    return new_lo, np.maximum(new_hi, new_lo)


def _row_gain(w) -> float | None:
    """Largest row sum of |w| over an output-first weight array (None: not quantized)."""
    if w is None:
        return None
    w = np.abs(np.asarray(w, dtype=np.float64))
    return float(w.reshape(w.shape[0], -1).sum(1).max(initial=0.0))


class NodeKind:
    name: ClassVar[str]
    role: ClassVar[str] = "linear"        # source | linear | activation | timing
    weighted: ClassVar[bool] = False      # has a weight tensor scaled by quantization
    torch_types: ClassVar[tuple[type, ...]] = ()
    description: ClassVar[str] = ""

    def from_torch(self, module: nn.Module) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise InputError(f"{self.name} nodes are not built from torch modules")

    def infer_shape(self, node: Node, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        return in_shapes[0]

    def forward(self, node: Node, *xs: torch.Tensor) -> torch.Tensor:
        """Float semantics on batch-first tensors (the ANN view)."""
        return xs[0]

    def forward_int(self, node: Node, *xs: torch.Tensor) -> torch.Tensor:
        """Fixed-point semantics (integer-valued float64 tensors, no bias: semantics §3)."""
        return self.forward(node, *xs)

    def simulate(self, node: Node, current: torch.Tensor, fixed_point: bool, ctx) -> torch.Tensor:
        """Population dynamics over time-major current (T, N, ...) -> output (T_out, N, ...)."""
        raise NotImplementedError(f"{self.name} is not a population kind")

    # ---- budget model (mtdeploy.targets.resources) ---------------------------------------
    #: one kernel per output channel serves every position, so a core stores it once
    #: (conv, pooling, element-wise ops); False for dense matrices
    shift_invariant: ClassVar[bool] = True

    def input_box(self, node: Node, in_shapes: list[tuple[int, ...]], index: int, box):
        """Bounding boxes of input ``index`` read by boxes of this node's output.

        ``box`` holds one ``(key, lo, hi)`` per output dim (C, H, W; a vector is (N, 1, 1)):
        element i of ``lo``/``hi`` bounds this dim for index i along dim ``key`` of the consuming
        population. Returns the same structure over the input. Default: element-wise.
        """
        return box

    def int_gain(self, node: Node, index: int = 0) -> float | None:
        """Largest sum of |integer weights| one output draws from input ``index`` (the row
        infinity-norm): bounds an accumulator's range. None where not known (unquantized)."""
        return 1.0

    # ---- NetX HDF5 (mtdeploy.targets.loihi2.netx_export / netx_import) -------------------
    #: the NetX layer type this kind is read from (netx_import looks kinds up by it)
    netx_layer_type: ClassVar[str | None] = None
    #: the NetX neuron types a population kind is read from
    netx_neuron_types: ClassVar[tuple[str, ...]] = ()

    def from_netx(self, fields: dict) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """attrs and params from a NetX layer's normalised fields (netx_import)."""
        raise InputError(f"{self.name} nodes are not read from NetX layers")

    def to_netx(self, node: Node) -> dict | None:
        """NetX synapse fields when a projection is this node alone (None: not a synapse)."""
        return None

    def netx_neuron(self, node: Node, drive: float, steps: int) -> tuple[dict, np.ndarray, bool]:
        """(neuron group, integer bias, exact) standing for this population in stock NetX.

        ``drive``: integer input units per step per unit spike rate on the incoming edge;
        ``steps``: the window a stock run gives every layer (netx's ``reset_interval``).
        """
        raise InputError(f"{node.label()}: a {self.name} population has no NetX neuron")

@register
class InputKind(NodeKind):
    name = "input"
    role = "source"
    description = "the network input (one sample's shape)"

    def infer_shape(self, node, in_shapes):
        return tuple(node.attrs["shape"])


    netx_layer_type = "input"

    def from_netx(self, fields):
        return {"shape": [int(s) for s in fields["shape"]]}, {}

@register
class ConvKind(NodeKind):
    name = "conv"
    weighted = True
    torch_types = (nn.Conv2d,)
    description = "2-D convolution (stride, padding, dilation, groups), OIHW weights"

    def from_torch(self, m: nn.Conv2d):
        if m.padding_mode != "zeros":
            raise InputError(f"padding_mode={m.padding_mode!r} is not supported (only zeros)")
        if isinstance(m.padding, str):
            raise InputError(f"padding={m.padding!r} is not supported; give explicit integers")
        attrs = {"stride": _pair(m.stride), "padding": _pair(m.padding),
                 "dilation": _pair(m.dilation), "groups": int(m.groups),
                 "in_channels": m.in_channels, "out_channels": m.out_channels,
                 "kernel": _pair(m.kernel_size)}
        return attrs, {"weight": _np(m.weight), "bias": _np(m.bias, (m.out_channels,))}

    def infer_shape(self, node, in_shapes):
        c, h, w = in_shapes[0]
        a = node.attrs
        if c != a["in_channels"]:
            raise InputError(f"{node.label()}: expects {a['in_channels']} input channels, got {c}")
        out = []
        for size, k, s, p, d in zip((h, w), a["kernel"], a["stride"], a["padding"], a["dilation"]):
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        if min(out) < 1:
            raise InputError(f"{node.label()}: input {in_shapes[0]} is too small for the kernel")
        return (a["out_channels"], *out)

    def forward(self, node, x):
        a = node.attrs
        return F.conv2d(x, _t(node.params["weight"]).to(x.dtype), _t(node.params["bias"]).to(x.dtype),
                        a["stride"], a["padding"], a["dilation"], a["groups"])

    def forward_int(self, node, x):
        a = node.attrs
        w = torch.as_tensor(node.params["weight_int"], dtype=x.dtype)
        return F.conv2d(x, w, None, a["stride"], a["padding"], a["dilation"], a["groups"])

    def input_box(self, node, in_shapes, index, box):
        # Bounding boxes: a dilated kernel's holes are counted as read (an over-estimate).
        a = node.attrs
        c_in, h_in, w_in = dims3(in_shapes[index])
        per_out, per_in = a["out_channels"] // a["groups"], c_in // a["groups"]
        (kc, c_lo, c_hi), (kh, h_lo, h_hi), (kw, w_lo, w_hi) = box
        channels = (c_lo // per_out * per_in, np.maximum((c_hi - 1) // per_out + 1, c_lo // per_out) * per_in)
        rows = _window(h_lo, h_hi, a["kernel"][0], a["stride"][0], a["padding"][0], a["dilation"][0], h_in)
        cols = _window(w_lo, w_hi, a["kernel"][1], a["stride"][1], a["padding"][1], a["dilation"][1], w_in)
        return ((kc, *channels), (kh, *rows), (kw, *cols))

    def int_gain(self, node, index=0):
        return _row_gain(node.params.get("weight_int"))

    netx_layer_type = "conv"

    def from_netx(self, fields):
        w = np.asarray(fields["weight"], dtype=np.int64)
        attrs = {"stride": list(fields["stride"]), "padding": list(fields["padding"]),
                 "dilation": list(fields["dilation"]), "groups": int(fields["groups"]),
                 "in_channels": int(w.shape[1] * fields["groups"]), "out_channels": int(w.shape[0]),
                 "kernel": [int(w.shape[2]), int(w.shape[3])]}
        return attrs, {"weight": w.astype(np.float32), "weight_int": w.astype(np.int32),
                       "bias": np.zeros(w.shape[0], np.float32)}

    def to_netx(self, node):
        a = node.attrs
        return {"type": "conv", "weight": np.asarray(node.params["weight_int"], np.int64),
                "stride": list(a["stride"]), "padding": list(a["padding"]),
                "dilation": list(a["dilation"]), "groups": int(a["groups"])}

@register
class LinearKind(NodeKind):
    name = "linear"
    weighted = True
    shift_invariant = False       # a dense matrix: no kernel to share
    torch_types = (nn.Linear,)
    description = "fully connected layer"

    def from_torch(self, m: nn.Linear):
        return ({"in_features": m.in_features, "out_features": m.out_features},
                {"weight": _np(m.weight), "bias": _np(m.bias, (m.out_features,))})

    def infer_shape(self, node, in_shapes):
        if tuple(in_shapes[0]) != (node.attrs["in_features"],):
            raise InputError(f"{node.label()}: expects input ({node.attrs['in_features']},), "
                             f"got {tuple(in_shapes[0])}")
        return (node.attrs["out_features"],)

    def forward(self, node, x):
        return F.linear(x, _t(node.params["weight"]).to(x.dtype), _t(node.params["bias"]).to(x.dtype))

    def forward_int(self, node, x):
        return F.linear(x, torch.as_tensor(node.params["weight_int"], dtype=x.dtype))

    def input_box(self, node, in_shapes, index, box):
        # Columns with a non-zero weight, as a monotone envelope (suffix-min of each row's first
        # non-zero column, prefix-max of its last) so that ranges of rows map to ranges.
        w = node.params.get("weight_int", node.params.get("weight"))
        n_in = node.attrs["in_features"]
        (k, lo, hi) = box[0]
        if w is None or np.all(w != 0):
            first = np.zeros(node.attrs["out_features"], np.int64)
            last = np.full(node.attrs["out_features"], n_in, np.int64)
        else:
            nz = np.asarray(w) != 0
            has = nz.any(1)
            first = np.where(has, nz.argmax(1), n_in)
            last = np.where(has, n_in - nz[:, ::-1].argmax(1), 0)
            first = np.minimum.accumulate(first[::-1])[::-1]
            last = np.maximum.accumulate(last)
        top = node.attrs["out_features"] - 1
        lo, safe = np.minimum(lo, top), np.minimum(np.maximum(hi - 1, lo), top)
        cols_lo, cols_hi = first[lo], np.where(hi > lo, last[safe], first[lo])
        zero, one = np.zeros_like(lo), np.ones_like(lo)
        return ((k, cols_lo, np.maximum(cols_hi, cols_lo)), (k, zero, one), (k, zero, one))

    def int_gain(self, node, index=0):
        return _row_gain(node.params.get("weight_int"))

    netx_layer_type = "dense"

    def from_netx(self, fields):
        w = np.asarray(fields["weight"], dtype=np.int64)
        return ({"in_features": int(w.shape[1]), "out_features": int(w.shape[0])},
                {"weight": w.astype(np.float32), "weight_int": w.astype(np.int32),
                 "bias": np.zeros(w.shape[0], np.float32)})

    def to_netx(self, node):
        return {"type": "dense", "weight": np.asarray(node.params["weight_int"], np.int64)}

@register
class BatchNormKind(NodeKind):
    name = "batchnorm"
    torch_types = (nn.BatchNorm1d, nn.BatchNorm2d)
    description = "batch normalisation (inference statistics); folded into the preceding conv/linear"

    def from_torch(self, m):
        c = m.num_features
        mean = _np(m.running_mean) if m.running_mean is not None else np.zeros(c, np.float32)
        var = _np(m.running_var) if m.running_var is not None else np.ones(c, np.float32)
        return ({"eps": float(m.eps)},
                {"running_mean": mean, "running_var": var,
                 "weight": _np(m.weight) if m.weight is not None else np.ones(c, np.float32),
                 "bias": _np(m.bias) if m.bias is not None else np.zeros(c, np.float32)})

    def forward(self, node, x):
        p = node.params
        return F.batch_norm(x, _t(p["running_mean"]).to(x.dtype), _t(p["running_var"]).to(x.dtype),
                            _t(p["weight"]).to(x.dtype), _t(p["bias"]).to(x.dtype), False, 0.0,
                            node.attrs["eps"])


@register
class AvgPoolKind(NodeKind):
    name = "avgpool"
    torch_types = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    description = "2-D average pooling (AdaptiveAvgPool2d only to 1x1, as a global pool)"

    def from_torch(self, m):
        if isinstance(m, nn.AdaptiveAvgPool2d):
            size = _pair(m.output_size) if m.output_size is not None else [None, None]
            if size != [1, 1]:
                raise InputError(f"AdaptiveAvgPool2d(output_size={m.output_size}) is supported "
                                 "only with output_size 1")
            return {"global": True, "kernel": None, "stride": None, "padding": [0, 0],
                    "count_include_pad": True}, {}
        if m.ceil_mode:
            raise InputError("AvgPool2d(ceil_mode=True) is not supported")
        if m.divisor_override is not None:
            raise InputError("AvgPool2d(divisor_override=...) is not supported")
        kernel = _pair(m.kernel_size)
        stride = _pair(m.stride) if m.stride is not None else kernel
        return {"global": False, "kernel": kernel, "stride": stride, "padding": _pair(m.padding),
                "count_include_pad": bool(m.count_include_pad)}, {}

    def infer_shape(self, node, in_shapes):
        c, h, w = in_shapes[0]
        a = node.attrs
        if a.get("global"):
            # Resolve the global pool against the actual input once shapes are known.
            a["kernel"], a["stride"] = [h, w], [h, w]
        out = [(size + 2 * p - k) // s + 1
               for size, k, s, p in zip((h, w), a["kernel"], a["stride"], a["padding"])]
        return (c, *out)

    def forward(self, node, x):
        a = node.attrs
        return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"],
                            count_include_pad=a["count_include_pad"])

    def forward_int(self, node, x):
        # A sum pool: the 1/(kh*kw) lives in the downstream weights (semantics §3).
        a = node.attrs
        return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], count_include_pad=True,
                            divisor_override=1)

    def input_box(self, node, in_shapes, index, box):
        a = node.attrs
        _, h_in, w_in = dims3(in_shapes[index])
        (kc, c_lo, c_hi), (kh, h_lo, h_hi), (kw, w_lo, w_hi) = box
        rows = _window(h_lo, h_hi, a["kernel"][0], a["stride"][0], a["padding"][0], 1, h_in)
        cols = _window(w_lo, w_hi, a["kernel"][1], a["stride"][1], a["padding"][1], 1, w_in)
        return ((kc, c_lo, c_hi), (kh, *rows), (kw, *cols))

    def int_gain(self, node, index=0):
        return float(node.attrs["kernel"][0] * node.attrs["kernel"][1])   # a sum pool


@register
class FlattenKind(NodeKind):
    name = "flatten"
    torch_types = (nn.Flatten,)
    description = "flatten to a vector in PyTorch CHW order"

    def from_torch(self, m):
        if m.start_dim != 1 or m.end_dim != -1:
            raise InputError("Flatten is supported only with start_dim=1, end_dim=-1")
        return {}, {}

    def infer_shape(self, node, in_shapes):
        return (int(np.prod(in_shapes[0])),)

    def forward(self, node, x):
        return x.flatten(1)

    def input_box(self, node, in_shapes, index, box):
        # A range [a, b) of CHW-flattened indices -> its bounding (C, H, W) box.
        c, h, w = dims3(in_shapes[index])
        k, a, b = box[0]
        empty = b <= a
        last = np.maximum(b - 1, a)
        c_lo, c_hi = a // (h * w), last // (h * w) + 1
        one_c = c_hi - c_lo == 1
        h_lo = np.where(one_c, (a % (h * w)) // w, 0)
        h_hi = np.where(one_c, (last % (h * w)) // w + 1, h)
        one_row = one_c & (h_hi - h_lo == 1)
        w_lo, w_hi = np.where(one_row, a % w, 0), np.where(one_row, last % w + 1, w)
        return ((k, c_lo, np.where(empty, c_lo, c_hi)), (k, h_lo, h_hi), (k, w_lo, w_hi))

    netx_layer_type = "flatten"

    def from_netx(self, fields):
        return {}, {}

@register
class AddKind(NodeKind):
    name = "add"
    description = "element-wise sum of its inputs (residual connections)"

    def infer_shape(self, node, in_shapes):
        if len({tuple(s) for s in in_shapes}) != 1:
            raise InputError(f"{node.label()}: adds tensors of different shapes {in_shapes}")
        return in_shapes[0]

    def forward(self, node, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@register
class QCFSKind(NodeKind):
    name = "qcfs"
    role = "activation"
    description = "QCFS activation; becomes a population of spiking neurons with T = levels"

    @property
    def torch_types(self):  # resolved lazily: mtdeploy.nn imports nothing from the IR
        from mtdeploy.nn import QCFS

        return (QCFS,)

    def from_torch(self, m):
        return {"levels": int(m.levels)}, {"threshold": np.asarray(float(m.threshold), np.float32)}

    def forward(self, node, x):
        lam = float(node.params["threshold"])
        levels = node.attrs["levels"]
        return torch.clamp(torch.floor(x * (levels / lam) + 0.5), 0, levels) * (lam / levels)

    def simulate(self, node, current, fixed_point, ctx):
        from mtdeploy.sim import dynamics

        run = dynamics.tpp if node.attrs.get("neuron", "if") == "tpp" else dynamics.integrate_and_fire
        return run(node, current, fixed_point, ctx)

    def closed_form(self, node, current_int):
        """Spike count under constant integer current (the equally quantized ANN)."""
        from mtdeploy.sim import dynamics

        return dynamics.if_count_closed_form(node, current_int)


    def netx_neuron(self, node, drive, steps):
        from mtdeploy.targets.loihi2.netx_export import if_as_cuba

        return if_as_cuba(node, drive, steps)

@register
class AlignKind(NodeKind):
    name = "align"
    role = "timing"
    description = ("temporal alignment between a producer with t_in steps and a consumer with "
                   "t_out steps (avg-repeat, ttm); the identity on rates")

    def resample(self, node, x, fixed_point):
        """Time-major (t_in, N, ...) -> (t_out, N, ...), semantics §2/§3."""
        from mtdeploy.sim import dynamics

        return dynamics.align(node, x, fixed_point)


    def rate_gain(self, node) -> float:
        """Integer units per step that one unit of producer spike rate becomes (semantics §3):
        avg-repeat delivers the whole count each step, TTM down-sampling a group's sum."""
        a = node.attrs
        if a["method"] == "avg-repeat":
            return float(a["t_in"])
        if a["method"] == "ttm" and a["t_in"] > a["t_out"]:
            return a["t_in"] / a["t_out"]
        return 1.0

@register
class ReadoutKind(NodeKind):
    name = "readout"
    role = "activation"
    description = ("the output population: accumulates the last layer's current over its window; "
                   "its value is the mean current, in the ANN's logit units")

    def simulate(self, node, current, fixed_point, ctx):
        from mtdeploy.sim import dynamics

        return dynamics.readout(node, current, fixed_point)

    def closed_form(self, node, current_int):
        from mtdeploy.sim import dynamics

        return dynamics.readout(node, current_int[None], True)[0]

    def netx_neuron(self, node, drive, steps):
        from mtdeploy.targets.loihi2.netx_export import readout_as_cuba

        return readout_as_cuba(node, drive, steps)


@register
class CubaKind(NodeKind):
    name = "cuba"
    role = "activation"
    netx_neuron_types = ("CUBA", "LOIHI")
    description = ("a Loihi CUBA LIF population as NetX/Lava define it (read from NetX files): "
                   "decays in 1/4096, reset to zero, spikes when v > vThMant; bit-exact with "
                   "Lava's fixed_pt LIF")

    def from_netx(self, fields):
        n = fields["neuron"]
        attrs = {"iDecay": int(n["iDecay"]), "vDecay": int(n["vDecay"]), "vThMant": int(n["vThMant"])}
        bias = np.broadcast_to(np.asarray(fields.get("bias", 0), np.int64), fields["shape"]).copy()
        # The bias enters the voltage, not the (possibly persistent) current, so it is kept
        # apart from the bias_int the simulator adds to the current.
        return attrs, {"bias_mant": bias, "bias_int": np.zeros(fields["shape"], np.int64)}

    def simulate(self, node, current, fixed_point, ctx):
        from mtdeploy.targets.loihi2.netx_import import cuba_lif

        return cuba_lif(node, current)

    def closed_form(self, node, current_int):
        raise InputError(f"{node.label()}: a CUBA LIF population has no closed form; simulate it")

    def netx_neuron(self, node, drive, steps):
        a = node.attrs
        return ({"type": "CUBA", "iDecay": a["iDecay"], "vDecay": a["vDecay"],
                 "vThMant": a["vThMant"], "refDelay": 1, "gradedSpike": 0},
                np.asarray(node.params["bias_mant"], np.int64), node.T == steps)
