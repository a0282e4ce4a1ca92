"""Temporal alignment between a producer with ``t_in`` steps and a consumer with ``t_out``.

* ``avg-repeat`` (exact): the producer's spikes over its window, averaged (float) or summed
  (fixed point, the 1/t_in left to the weights), fed on each of the consumer's steps.
* ``ttm`` (MTT, Du et al.): group boundaries b_k = round(k T_more / T_fewer); down-sampling sums
  each group (float: times t_out/t_in, so rates are kept), up-sampling repeats each step.

Both are the identity on rates. :func:`float_gain` is the one statement of the real value a
unit crossing the node carries; quantization, Lava and NetX all read it.
"""
from __future__ import annotations

import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import NodeKind, kind_of, register

METHODS = ("avg-repeat", "ttm", "none")


def ttm_boundaries(t_more: int, t_fewer: int) -> list[int]:
    """MTT's group boundaries b_k = round(k * T_more / T_fewer), k = 0..T_fewer."""
    return [int(round(k * t_more / t_fewer)) for k in range(t_fewer + 1)]


def float_gain(attrs: dict) -> float:
    """Real value, per step, of one producer spike unit in the integer stream leaving the align
    node: avg-repeat delivers the whole count each step (1/t_in of it is the mean), TTM
    down-sampling a group's sum (t_out/t_in of it keeps the rate), everything else 1."""
    if attrs["method"] == "avg-repeat":
        return 1.0 / attrs["t_in"]
    if attrs["method"] == "ttm" and attrs["t_in"] > attrs["t_out"]:
        return attrs["t_out"] / attrs["t_in"]
    return 1.0


def edge_scale(graph, key: str, input_unit: float) -> float:
    """Real value of one unit entering a projection through edge ``key`` (an align node, or a
    producer streaming directly): the producer's spike value (its threshold; ``input_unit``
    for the real-valued input) times the alignment's gain (semantics §3)."""
    node = graph[key]
    aligned = kind_of(node).role == "timing"
    producer = graph[node.inputs[0]] if aligned else node
    if kind_of(producer).role == "source":
        value = input_unit
    elif "threshold" in producer.params:
        value = float(producer.params["threshold"])
    else:
        raise InputError(f"{producer.label()}: population without a threshold cannot feed "
                         "a quantized projection")
    return value * (float_gain(node.attrs) if aligned else 1.0)


@register
class AlignKind(NodeKind):
    name = "align"
    role = "timing"
    description = ("temporal alignment between a producer with t_in steps and a consumer with "
                   "t_out steps (avg-repeat, ttm); the identity on rates")

    def reads_steps(self, node) -> bool:
        """Whether :meth:`resample` needs the producer's steps; avg-repeat needs only their
        sum (:meth:`repeat_total`), so a simulator may skip keeping the steps."""
        return node.attrs["method"] != "avg-repeat"

    def repeat_total(self, node, total: torch.Tensor, fixed_point: bool,
                     unit: float = 1.0) -> torch.Tensor:
        """avg-repeat from the sum of the producer's steps (N, ...), in units of ``unit`` (a
        spike count and the value of one spike: one multiply, ``count * (th / T)``, the ANN's
        own form of a QCFS output): the mean (float) or the sum (fixed point) on each of the
        t_out steps, as a broadcast view (stride 0 in time), so the projection after it can
        run once, not t_out times (see sim.reference)."""
        scale = unit if fixed_point else unit / node.attrs["t_in"]
        acc = total if scale == 1.0 else total * scale
        return acc.unsqueeze(0).expand(node.attrs["t_out"], *acc.shape)

    def resample(self, node, x: torch.Tensor, fixed_point: bool) -> torch.Tensor:
        """Time-major (t_in, N, ...) -> (t_out, N, ...)."""
        a = node.attrs
        t_in, t_out, method = a["t_in"], a["t_out"], a["method"]
        if x.shape[0] != t_in:
            raise ValueError(f"{node.name}: expected {t_in} input steps, got {x.shape[0]}")
        if method == "avg-repeat":
            return self.repeat_total(node, x.sum(0), fixed_point)
        if method != "ttm":
            raise InputError(f"{node.label()}: unknown alignment method {method!r}")
        if t_in == t_out:
            return x.clone()
        if t_in > t_out:   # down-sample: sum each group
            b = ttm_boundaries(t_in, t_out)
            out = torch.stack([x[b[k]:b[k + 1]].sum(0) for k in range(t_out)])
            return out if fixed_point else out * (t_out / t_in)
        if t_in == 1:   # one step repeated: a broadcast view, like avg-repeat's
            return x.expand(t_out, *x.shape[1:])
        b = ttm_boundaries(t_out, t_in)   # up-sample: replicate each step over its group
        index = torch.tensor([k for k in range(t_in) for _ in range(b[k + 1] - b[k])],
                             device=x.device)
        return x[index].clone()

    def closed_form_input(self, node, x: torch.Tensor) -> torch.Tensor:
        """The accumulated count a constant-current population sees (the quantized ANN)."""
        if node.attrs["method"] != "avg-repeat":
            raise InputError(f"{node.name}: the equally quantized ANN exists only with "
                             "avg-repeat alignment on every edge")
        return x.sum(0, keepdim=True)
