"""Structural kinds: the network ``input``, ``flatten``, residual ``add``, and ``batchnorm``
(inference statistics; :func:`mtdeploy.passes.fold_bn.fold_batchnorm` folds it into the conv or
linear layer before it, so it never reaches the SNN)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import NodeKind, dims3, register
from mtdeploy.kinds.common import (ScriptConfigError, script_option, to_numpy, to_tensor,
                                   traced_argument, with_state)


@register
class InputKind(NodeKind):
    name = "input"
    role = "source"
    description = "the network input (one sample's shape)"

    def infer_shape(self, node, in_shapes):
        return tuple(node.attrs["shape"])


@register
class FlattenKind(NodeKind):
    name = "flatten"
    torch_types = (nn.Flatten,)
    description = "flatten to a vector in PyTorch CHW order"

    def from_torch(self, m):
        if m.start_dim != 1 or m.end_dim != -1:
            raise InputError("Flatten is supported only with start_dim=1, end_dim=-1")
        return {}, {}

    def from_script(self, sm):
        return nn.Flatten(script_option(sm, "start_dim", "aten::flatten", 1),
                          script_option(sm, "end_dim", "aten::flatten", 2))

    def to_module(self, node):
        return nn.Flatten(1, -1)

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


_BN_OP = "aten::batch_norm"   # (input, weight, bias, mean, var, training, momentum, eps, cudnn)


@register
class BatchNormKind(NodeKind):
    name = "batchnorm"
    torch_types = (nn.BatchNorm1d, nn.BatchNorm2d)
    description = ("batch normalisation with inference statistics, after a conv, conv1d or "
                   "linear layer; folded into that layer's weights")

    def from_torch(self, m):
        c = m.num_features
        mean = to_numpy(m.running_mean) if m.running_mean is not None else np.zeros(c, np.float32)
        var = to_numpy(m.running_var) if m.running_var is not None else np.ones(c, np.float32)
        return ({"eps": float(m.eps)},
                {"running_mean": mean, "running_var": var,
                 "weight": to_numpy(m.weight) if m.weight is not None else np.ones(c, np.float32),
                 "bias": to_numpy(m.bias) if m.bias is not None else np.zeros(c, np.float32)})

    def from_script(self, sm):
        if not hasattr(sm, "eps") and traced_argument(sm, _BN_OP, 5):
            raise ScriptConfigError("it was traced in training mode (batch statistics); call "
                                    "model.eval() before torch.jit.trace")
        cls = nn.BatchNorm1d if sm.original_name == "BatchNorm1d" else nn.BatchNorm2d
        mean = getattr(sm, "running_mean", None)
        weight = getattr(sm, "weight", None)
        features = (mean if mean is not None else weight).shape[0]
        eager = cls(features, eps=float(script_option(sm, "eps", _BN_OP, 7)),
                    affine=weight is not None, track_running_stats=mean is not None)
        return with_state(eager, sm)

    def forward(self, node, x):
        p = node.params
        return F.batch_norm(x, to_tensor(p["running_mean"], x), to_tensor(p["running_var"], x),
                            to_tensor(p["weight"], x), to_tensor(p["bias"], x), False, 0.0,
                            node.attrs["eps"])


@register
class DelayKind(NodeKind):
    """A synaptic delay per output neuron of a projection (a NetX dense layer's ``delay``, as
    lava-dl netx applies it to the synapses into each neuron): the current of window step k is
    the undelayed current of step k - d (zero before the window). Nothing crosses the window's
    end: what would arrive after it is dropped, so each sample's window stays its own (stock
    netx delivers it into the next sample's window instead)."""

    name = "delay"
    temporal = True
    description = ("synaptic delay per neuron within the window (NetX dense 'delay'), "
                   "params delay (integer steps, the input's shape)")

    def infer_shape(self, node, in_shapes):
        d = np.asarray(node.params["delay"])
        if tuple(d.shape) != tuple(in_shapes[0]):
            raise InputError(f"{node.label()}: delay of shape {d.shape} does not match its "
                             f"input {tuple(in_shapes[0])}")
        if d.size and (d.min() < 0 or not np.all(d == np.round(d))):
            raise InputError(f"{node.label()}: delays must be non-negative integers")
        return in_shapes[0]

    def forward_steps(self, node, x):
        """out[k, ..., i] = x[k - d_i, ..., i] for k >= d_i, else 0 (time-major)."""
        d = torch.as_tensor(np.asarray(node.params["delay"], np.int64), device=x.device)
        steps = x.shape[0]
        k = torch.arange(steps, device=x.device).view(steps, *([1] * (x.dim() - 1)))
        src = (k - d.unsqueeze(0).unsqueeze(0)).expand(steps, *x.shape[1:])
        gathered = torch.gather(x.contiguous(), 0, src.clamp(min=0))
        return torch.where(src >= 0, gathered, torch.zeros_like(gathered))
