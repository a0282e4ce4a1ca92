"""Convolutions: ``conv`` (nn.Conv2d, CHW maps) and ``conv1d`` (nn.Conv1d, CL signals).

Float: ``y = W * x + b`` (cross-correlation, zero padding, stride, dilation, groups). Integer:
``y = W_int * x`` (the bias lives in the population's ``bias_int``, semantics §3). One kernel
per output channel serves every position (shift-invariant), so a core stores it once.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import NodeKind, dims3, register
from mtdeploy.kinds.common import (ScriptConfigError, channels_and_sizes, copy_weighted, pair,
                                   row_gain, script_option, single, sliding_output, to_numpy,
                                   to_tensor, traced_argument, window, with_state, write_weighted)

_CONV_OP = "aten::_convolution"   # (input, weight, bias, stride, padding, dilation, transposed, ..)


class _Convolution(NodeKind):
    """An N-d convolution; subclasses fix N (``spatial``), the module type and the functional."""

    weighted = True
    spatial: int
    module_type: type[nn.Module]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.torch_types = (cls.module_type,)

    def _option(self, v) -> list[int]:
        return pair(v) if self.spatial == 2 else [single(v)]

    def from_torch(self, m):
        if m.padding_mode != "zeros":
            raise InputError(f"padding_mode={m.padding_mode!r} is not supported (only zeros)")
        if isinstance(m.padding, str):
            raise InputError(f"padding={m.padding!r} is not supported; give explicit integers")
        attrs = {"stride": self._option(m.stride), "padding": self._option(m.padding),
                 "dilation": self._option(m.dilation), "groups": int(m.groups),
                 "in_channels": m.in_channels, "out_channels": m.out_channels,
                 "kernel": self._option(m.kernel_size)}
        return attrs, {"weight": to_numpy(m.weight), "bias": to_numpy(m.bias, (m.out_channels,))}

    def from_script(self, sm):
        weight = sm.weight
        if not hasattr(sm, "groups") and traced_argument(sm, _CONV_OP, 6):
            raise ScriptConfigError("it is a transposed convolution")
        groups = int(script_option(sm, "groups", _CONV_OP, 8))
        eager = self.module_type(
            weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
            stride=tuple(script_option(sm, "stride", _CONV_OP, 3)),
            padding=script_option(sm, "padding", _CONV_OP, 4),
            dilation=tuple(script_option(sm, "dilation", _CONV_OP, 5)), groups=groups,
            bias=getattr(sm, "bias", None) is not None,
            padding_mode=getattr(sm, "padding_mode", "zeros"))
        return with_state(eager, sm)

    def to_module(self, node):
        a = node.attrs
        m = self.module_type(a["in_channels"], a["out_channels"], tuple(a["kernel"]),
                             tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]),
                             a["groups"], bias=True)
        return copy_weighted(m, node.params["weight"], node.params["bias"])

    def write_back(self, module, node):
        write_weighted(module, node)

    def infer_shape(self, node, in_shapes):
        c, sizes = channels_and_sizes(node, in_shapes[0], self.spatial)
        a = node.attrs
        if c != a["in_channels"]:
            raise InputError(f"{node.label()}: expects {a['in_channels']} input channels, got {c}")
        out = [sliding_output(n, k, s, p, d) for n, k, s, p, d in
               zip(sizes, a["kernel"], a["stride"], a["padding"], a["dilation"])]
        if min(out) < 1:
            raise InputError(f"{node.label()}: input {in_shapes[0]} is too small for the kernel")
        return (a["out_channels"], *out)

    def _conv(self, node, x, weight, bias):
        a = node.attrs
        op = F.conv2d if self.spatial == 2 else F.conv1d
        return op(x, weight, bias, a["stride"], a["padding"], a["dilation"], a["groups"])

    def forward(self, node, x):
        return self._conv(node, x, to_tensor(node.params["weight"], x),
                          to_tensor(node.params["bias"], x))

    def forward_int(self, node, x):
        return self._conv(node, x, to_tensor(node.params["weight_int"], x), None)

    def forward_at_zero(self, node, x):
        out = self.infer_shape(node, [tuple(x.shape[1:])])
        bias = to_tensor(node.params["bias"], x).reshape(-1, *[1] * (len(out) - 1))
        return bias.expand(len(x), *out).clone()

    def input_box(self, node, in_shapes, index, box):
        # Bounding boxes: a dilated kernel's holes are counted as read (an over-estimate).
        # dims3 lays a 1-D signal out as (C, 1, L): its rows pass through unchanged.
        a = node.attrs
        c_in, h_in, w_in = dims3(in_shapes[index])
        per_out, per_in = a["out_channels"] // a["groups"], c_in // a["groups"]
        (kc, c_lo, c_hi), (kh, h_lo, h_hi), (kw, w_lo, w_hi) = box
        channels = (c_lo // per_out * per_in,
                    np.maximum((c_hi - 1) // per_out + 1, c_lo // per_out) * per_in)
        geometry = list(zip(a["kernel"], a["stride"], a["padding"], a["dilation"]))
        rows = window(h_lo, h_hi, *geometry[0], h_in) if self.spatial == 2 else (h_lo, h_hi)
        cols = window(w_lo, w_hi, *geometry[-1], w_in)
        return ((kc, *channels), (kh, *rows), (kw, *cols))

    def int_gain(self, node, index=0):
        return row_gain(node.params.get("weight_int"))


@register
class ConvKind(_Convolution):
    name, spatial, module_type = "conv", 2, nn.Conv2d
    description = "2-D convolution (stride, padding, dilation, groups), OIHW weights"


@register
class Conv1dKind(_Convolution):
    name, spatial, module_type = "conv1d", 1, nn.Conv1d
    description = "1-D convolution over (C, L) signals (stride, padding, dilation, groups), OIL weights"
