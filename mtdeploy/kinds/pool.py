"""Average pooling: ``avgpool`` (AvgPool2d, AdaptiveAvgPool2d(1)) and ``avgpool1d`` (AvgPool1d,
AdaptiveAvgPool1d(1)); max pooling: ``maxpool`` (MaxPool2d, AdaptiveMaxPool2d(1)).

Float: the mean over each window. Integer: a *sum* pool, its ``1/k`` left to the downstream
weights (``divisor``), so the hardware only adds. Padding counts as zeros in the divisor
(``count_include_pad=True``); the other choice has position-dependent divisors, which integer
weights cannot hold.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import KINDS, NodeKind, dims3, register
from mtdeploy.kinds.common import (channels_and_sizes, pair, script_option, single,
                                   sliding_output, window)


class _AveragePool(NodeKind):
    spatial: int
    pool_type: type[nn.Module]
    adaptive_type: type[nn.Module]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.torch_types = (cls.pool_type, cls.adaptive_type)
        # the traced op's arguments: (input, kernel, stride, padding, ceil_mode, cip, ...)
        cls.script_op = f"aten::avg_pool{cls.spatial}d"

    def _option(self, v) -> list[int]:
        return pair(v) if self.spatial == 2 else [single(v)]

    def from_torch(self, m):
        if isinstance(m, self.adaptive_type):
            size = self._option(m.output_size) if m.output_size is not None else [None]
            if any(s != 1 for s in size):
                raise InputError(f"{type(m).__name__}(output_size={m.output_size}) is supported "
                                 "only with output_size 1")
            return {"global": True, "kernel": None, "stride": None,
                    "padding": [0] * self.spatial, "count_include_pad": True}, {}
        if m.ceil_mode:
            raise InputError(f"{type(m).__name__}(ceil_mode=True) is not supported")
        if getattr(m, "divisor_override", None) is not None:
            raise InputError(f"{type(m).__name__}(divisor_override=...) is not supported")
        kernel = self._option(m.kernel_size)
        stride = self._option(m.stride) if m.stride is not None else kernel
        return {"global": False, "kernel": kernel, "stride": stride,
                "padding": self._option(m.padding),
                "count_include_pad": bool(m.count_include_pad)}, {}

    def from_script(self, sm):
        if sm.original_name.startswith("Adaptive"):
            size = script_option(sm, "output_size", f"aten::adaptive_avg_pool{self.spatial}d", 1)
            return self.adaptive_type(tuple(size) if isinstance(size, list) else size)
        op = self.script_op
        options = dict(ceil_mode=script_option(sm, "ceil_mode", op, 4),
                       count_include_pad=script_option(sm, "count_include_pad", op, 5))
        if self.spatial == 2:
            options["divisor_override"] = script_option(sm, "divisor_override", op, 6)
        return self.pool_type(script_option(sm, "kernel_size", op, 1),
                              script_option(sm, "stride", op, 2) or None,
                              script_option(sm, "padding", op, 3), **options)

    def to_module(self, node):
        a = node.attrs
        if a.get("global"):
            return self.adaptive_type(1)
        return self.pool_type(tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]),
                              count_include_pad=bool(a["count_include_pad"]))

    def infer_shape(self, node, in_shapes):
        c, sizes = channels_and_sizes(node, in_shapes[0], self.spatial)
        a = node.attrs
        if a.get("global"):
            # Resolve the global pool against the actual input once shapes are known.
            a["kernel"], a["stride"] = list(sizes), list(sizes)
        return (c, *[sliding_output(n, k, s, p)
                     for n, k, s, p in zip(sizes, a["kernel"], a["stride"], a["padding"])])

    def _pool(self, x, a, count_include_pad, divisor_override=None):
        # A 1-D signal is pooled as a 1-row image, so both share avg_pool2d's exact sum pool.
        lift = self.spatial == 1
        kernel, stride = ([1, *a[k]] if lift else a[k] for k in ("kernel", "stride"))
        padding = [0, *a["padding"]] if lift else a["padding"]
        y = F.avg_pool2d(x.unsqueeze(2) if lift else x, kernel, stride, padding,
                         count_include_pad=count_include_pad, divisor_override=divisor_override)
        return y.squeeze(2) if lift else y

    def forward(self, node, x):
        return self._pool(x, node.attrs, node.attrs["count_include_pad"])

    def forward_int(self, node, x):
        return self._pool(x, node.attrs, True, divisor_override=1)

    def divisor(self, node):
        a = node.attrs
        if any(a["padding"]) and not a["count_include_pad"]:
            raise InputError(f"{node.label()}: average pooling with padding and "
                             "count_include_pad=False has position-dependent divisors; fixed "
                             "point needs count_include_pad=True")
        return 1.0 / math.prod(a["kernel"])

    def input_box(self, node, in_shapes, index, box):
        a = node.attrs
        _, h_in, w_in = dims3(in_shapes[index])
        (kc, c_lo, c_hi), (kh, h_lo, h_hi), (kw, w_lo, w_hi) = box
        geometry = list(zip(a["kernel"], a["stride"], a["padding"]))
        rows = window(h_lo, h_hi, *geometry[0], 1, h_in) if self.spatial == 2 else (h_lo, h_hi)
        cols = window(w_lo, w_hi, *geometry[-1], 1, w_in)
        return ((kc, c_lo, c_hi), (kh, *rows), (kw, *cols))

    def int_gain(self, node, index=0):
        return float(math.prod(node.attrs["kernel"]))   # a sum pool


@register
class AvgPoolKind(_AveragePool):
    name, spatial, pool_type, adaptive_type = "avgpool", 2, nn.AvgPool2d, nn.AdaptiveAvgPool2d
    description = "2-D average pooling (AdaptiveAvgPool2d only to 1x1, as a global pool)"


@register
class AvgPool1dKind(_AveragePool):
    name, spatial, pool_type, adaptive_type = "avgpool1d", 1, nn.AvgPool1d, nn.AdaptiveAvgPool1d
    description = "1-D average pooling over (C, L) (AdaptiveAvgPool1d only to 1, as a global pool)"


@register
class MaxPoolKind(NodeKind):
    """2-D max pooling (MaxPool2d without dilation, ceil mode or indices; AdaptiveMaxPool2d
    only to 1x1, as a global pool).

    Exact only where its input is a whole window's spike counts: with average-and-repeat
    alignment every step of the consumer's window carries each producer neuron's count (times
    a positive scale), so the max over those equals the ANN's max over QCFS outputs (max
    commutes with a positive scale and with a per-channel bias). With ``ttm``/``none`` the
    tree sees spikes step by step, and a max over spikes is not a max over counts: conversion
    refuses it (docs/semantics.md). Integer form: the same max (no divisor); padding is -inf.
    """

    name = "maxpool"
    torch_types = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
    linear_map = False
    description = "2-D max pooling (exact with avg-repeat alignment; AdaptiveMaxPool2d only to 1x1)"

    def from_torch(self, m):
        if isinstance(m, nn.AdaptiveMaxPool2d):
            if m.return_indices or any(s != 1 for s in pair(m.output_size)):
                raise InputError(f"AdaptiveMaxPool2d(output_size={m.output_size}) is supported "
                                 "only with output_size 1 and no indices")
            return {"global": True, "kernel": None, "stride": None, "padding": [0, 0]}, {}
        if m.ceil_mode or m.return_indices or pair(m.dilation) != [1, 1]:
            raise InputError("MaxPool2d with ceil_mode, return_indices or dilation is not "
                             "supported")
        kernel = pair(m.kernel_size)
        stride = pair(m.stride) if m.stride is not None else kernel
        return {"global": False, "kernel": kernel, "stride": stride,
                "padding": pair(m.padding)}, {}

    def from_script(self, sm):
        if sm.original_name.startswith("Adaptive"):
            size = script_option(sm, "output_size", "aten::adaptive_max_pool2d", 1)
            return nn.AdaptiveMaxPool2d(tuple(size) if isinstance(size, list) else size)
        op = "aten::max_pool2d"
        return nn.MaxPool2d(script_option(sm, "kernel_size", op, 1),
                            script_option(sm, "stride", op, 2) or None,
                            script_option(sm, "padding", op, 3),
                            script_option(sm, "dilation", op, 4),
                            ceil_mode=script_option(sm, "ceil_mode", op, 5))

    def to_module(self, node):
        a = node.attrs
        if a.get("global"):
            return nn.AdaptiveMaxPool2d(1)
        return nn.MaxPool2d(tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))

    def infer_shape(self, node, in_shapes):
        return KINDS["avgpool"].infer_shape(node, in_shapes)

    def forward(self, node, x):
        a = node.attrs
        return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"])

    def forward_int(self, node, x):
        return self.forward(node, x)

    def input_box(self, node, in_shapes, index, box):
        return KINDS["avgpool"].input_box(node, in_shapes, index, box)

    def int_gain(self, node, index=0):
        return 1.0          # a max of its inputs
