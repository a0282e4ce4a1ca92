"""``linear`` (nn.Linear): ``y = W x + b``; integer form ``y = W_int x``. A dense matrix: no
kernel is shared between outputs, so its synapses cost per (output, input) pair."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import NodeKind, register
from mtdeploy.kinds.common import (ScriptConfigError, copy_weighted, row_gain, to_numpy, to_tensor,
                                   write_weighted)


#: weights above which the integer forward converts its matrix a block of rows at a time
INT_BLOCK = 2 ** 22


@register
class LinearKind(NodeKind):
    name = "linear"
    weighted = True
    shift_invariant = False
    torch_types = (nn.Linear,)
    description = "fully connected layer"

    def from_torch(self, m: nn.Linear):
        return ({"in_features": m.in_features, "out_features": m.out_features},
                {"weight": to_numpy(m.weight), "bias": to_numpy(m.bias, (m.out_features,))})

    def from_script(self, sm):
        # built 1 x 1, then given the archive's own tensors: a VGG-16-224 classifier's 100M
        # weights were randomly initialised (1.3 s) and then overwritten by a copy
        state = sm.state_dict()
        eager = nn.Linear(1, 1, bias="bias" in state)
        if set(state) != set(eager.state_dict()):
            raise ScriptConfigError(f"its state holds {sorted(state)}, not a Linear's")
        eager.out_features, eager.in_features = state["weight"].shape
        for name, value in state.items():
            setattr(eager, name, nn.Parameter(value.detach()))
        return eager.eval()

    def to_module(self, node):
        m = nn.Linear(node.attrs["in_features"], node.attrs["out_features"], bias=True)
        return copy_weighted(m, node.params["weight"], node.params["bias"])

    def write_back(self, module, node):
        write_weighted(module, node)

    def infer_shape(self, node, in_shapes):
        if tuple(in_shapes[0]) != (node.attrs["in_features"],):
            raise InputError(f"{node.label()}: expects input ({node.attrs['in_features']},), "
                             f"got {tuple(in_shapes[0])}")
        return (node.attrs["out_features"],)

    def forward(self, node, x):
        return F.linear(x, to_tensor(node.params["weight"], x), to_tensor(node.params["bias"], x))

    def forward_int(self, node, x):
        w = np.asarray(node.params["weight_int"])
        if w.size <= INT_BLOCK:
            return F.linear(x, to_tensor(w, x))
        # integer-valued, so exact in any order: a block of rows at a time, never the whole
        # weight in x's type (a VGG-16-224 classifier's 100M as float64: 0.8 GB)
        step = max(1, INT_BLOCK // w.shape[1])
        return torch.cat([F.linear(x, to_tensor(w[r0:r0 + step], x))
                          for r0 in range(0, len(w), step)], -1)

    def forward_at_zero(self, node, x):
        return to_tensor(node.params["bias"], x).expand(len(x), -1).clone()

    def input_box(self, node, in_shapes, index, box):
        # Columns with a non-zero weight, as a monotone envelope (suffix-min of each row's first
        # non-zero column, prefix-max of its last) so that ranges of rows map to ranges.
        w = node.params.get("weight_int", node.params.get("weight"))
        n_in = node.attrs["in_features"]
        (k, lo, hi) = box[0]
        nz = None if w is None else np.asarray(w) != 0
        if nz is None or nz.all():
            first = np.zeros(node.attrs["out_features"], np.int64)
            last = np.full(node.attrs["out_features"], n_in, np.int64)
        else:
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
        return row_gain(node.params.get("weight_int"))
