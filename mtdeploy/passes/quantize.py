"""Fixed-point quantization: per-population power-of-two units, integer weights, gains, thresholds.

Implements docs/semantics.md §3. Every scale that the float network applies between two
populations (the producer's spike value, 1/t_in of averaging, TTM's t_out/t_in, average
pooling's 1/k) is folded into the one weighted op of each path, so the hardware only ever
adds integer weights and compares against an integer threshold.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import is_alignment, is_population, populations, tree_nodes
from mtdeploy.kinds.align import edge_scale
from mtdeploy.validate import integer, real

STATE_BITS = 24
THRESHOLD_MAX = 2 ** 20   # leaves headroom in the 24-bit membrane for T * current
BITS_RANGE = (2, 16)      # weight and input bits: 1 bit has no magnitude, >16 no hardware


def _paths(graph: Graph, pop: Node):
    """Yield (edge node, path nodes from edge to pop exclusive, input index at the path's end)."""
    def walk(name, path):
        node = graph[name]
        if is_alignment(node) or is_population(node):
            yield node, path
            return
        for i in node.inputs:
            yield from walk(i, [node] + path)

    for idx, src in enumerate(pop.inputs):
        for edge_node, path in walk(src, []):
            yield edge_node, path


def quantize(graph: Graph, weight_bits: int = 8, input_bits: int = 8) -> Graph:
    """Add integer parameters to a converted graph (in place; returns it)."""
    if not graph.meta.get("converted"):
        raise InputError("quantize needs a converted graph (run mtdeploy.passes.convert first)")
    weight_bits = integer("weight_bits", weight_bits, *BITS_RANGE)
    input_bits = integer("input_bits", input_bits, *BITS_RANGE)
    wmax = 2 ** (weight_bits - 1) - 1
    input_max = float(graph.meta.get("input_max", 1.0))
    graph.meta["input_exp"] = int(math.floor(math.log2((2 ** (input_bits - 1) - 1) / input_max)))
    graph.meta.update({"weight_bits": weight_bits, "input_bits": input_bits, "quantized": True})
    input_unit = 2.0 ** -graph.meta["input_exp"]
    for pop in populations(graph):
        if pop.inputs:
            _quantize_population(graph, pop, wmax, input_unit)
    return graph


def _branches(graph: Graph, pop: Node, input_unit: float):
    """The real scales feeding ``pop``: {weighted op: (node, s_in, post)} (the op's input unit
    and the divisors after it) and [(consumer, input index, gain)] of unweighted paths."""
    weighted: dict[str, tuple[Node, float, float]] = {}
    gains: list[tuple[Node, int, float]] = []
    for edge_node, path in _paths(graph, pop):
        scale = edge_scale(graph, edge_node.name, input_unit)
        w_idx = next((k for k, n in enumerate(path) if kind_of(n).weighted), None)
        if w_idx is None:
            consumer = path[0] if path else pop
            gains.append((consumer, consumer.inputs.index(edge_node.name),
                          scale * math.prod(kind_of(n).divisor(n) for n in path)))
            continue
        wnode = path[w_idx]
        s_in = scale * math.prod(kind_of(n).divisor(n) for n in path[:w_idx])
        post = math.prod(kind_of(n).divisor(n) for n in path[w_idx + 1:])
        if wnode.name in weighted and not math.isclose(weighted[wnode.name][1], s_in):
            raise InputError(f"{wnode.label()}: inputs with different scales")
        weighted[wnode.name] = (wnode, s_in, post)
    return weighted, gains


def _quantize_population(graph: Graph, pop: Node, wmax: int, input_unit: float) -> None:
    """One power-of-two unit for the population's current (its threshold and bias). A single
    branch sets it from its peak, so its weights use the whole mantissa. Where branches join
    (a residual add), the unit comes from the finest branch and every other branch keeps its
    full mantissa too, scaled into the shared accumulator by a power of two of its own (a
    synapse group's weight exponent), so no branch is rounded away by another's range."""
    weighted, gains = _branches(graph, pop, input_unit)
    peaks = [float(np.abs(n.params["weight"]).max()) * s * p for n, s, p in weighted.values()]
    joined = len(weighted) + len(gains) > 1
    finest = [v for v in (peaks if joined and any(peaks) else peaks + [g for *_, g in gains]) if v > 0]
    peak = (min(finest) if joined else max(finest)) if finest else 0.0
    exp = int(math.floor(math.log2(wmax / peak))) if peak > 0 else 0
    if "threshold" in pop.params:
        threshold = real(f"{pop.label()}: threshold", float(pop.params["threshold"]), 0.0,
                         lo_open=True)
        exp = min(exp, int(math.floor(math.log2(THRESHOLD_MAX / threshold))))
    unit = 2.0 ** -exp
    for node, s_in, post in weighted.values():
        mantissa, shift = _mantissa(node.params["weight"], wmax, s_in * post / unit)
        mantissa <<= shift
        node.params["weight_int"] = mantissa
        node.attrs["weight_scale"] = s_in * post / unit
        node.attrs["weight_exp"] = shift
    for node in tree_nodes(graph, pop) + [pop]:
        node.attrs.pop("input_gain_int", None)
    for consumer, idx, gain in gains:
        g = consumer.attrs.setdefault("input_gain_int", [1] * len(consumer.inputs))
        mantissa, shift = _mantissa(np.asarray([gain / unit], np.float64), wmax)
        g[idx] = int(mantissa[0]) << shift
    pop.params["bias_int"] = np.round(_tree_bias(graph, pop) / unit).astype(np.int64)
    pop.attrs["exp"] = exp
    if "threshold" in pop.params:
        th = max(1, int(round(float(pop.params["threshold"]) / unit)))
        pop.attrs["threshold_int"] = th
        pop.attrs["v_init_int"] = int(math.floor(pop.attrs.get("v_init", 0.5) * th + 0.5))
    _check_ranges(graph, pop)


def _mantissa(values: np.ndarray, wmax: int, scale: float = 1.0,
              block: int = 2 ** 22) -> tuple[np.ndarray, int]:
    """``values * scale`` (in float64) as ``mantissa << shift`` (int32): the smallest
    power-of-two shift >= 0 that fits the rounded values into [-wmax, wmax] (0 for values
    already in range, as a single branch's). Rounded ``block`` values at a time, so a
    VGG-16 classifier's 100M weights need no float64 copy."""
    values = np.asarray(values)
    flat = values.reshape(-1)
    # float64(v) * scale rounds monotonically, so the peak is the scaled largest |value|
    peak = float(max(flat.max(initial=0.0), -flat.min(initial=0.0))) * scale
    shift = max(0, math.ceil(math.log2(peak / (wmax + 0.5)))) if peak > wmax + 0.5 else 0
    out = np.empty(flat.shape, np.int32)
    for b0 in range(0, len(flat), block):
        chunk = flat[b0:b0 + block].astype(np.float64) * scale
        if shift:
            chunk /= 2.0 ** shift
        np.rint(chunk, out=chunk)
        np.clip(chunk, -wmax, wmax, out=chunk)
        out[b0:b0 + block] = chunk
    return out.reshape(values.shape), shift


#: a layer that keeps fewer of its non-zero weights than this after rounding gets a warning
KEPT_WEIGHTS_WARNING = 0.9


def quantization_report(graph: Graph) -> list[dict]:
    """Per weighted layer of a quantized graph: the share of its non-zero weights that stay
    non-zero, the mantissa bits used, and the largest rounding error relative to its largest
    weight; ``warning`` where fewer than :data:`KEPT_WEIGHTS_WARNING` of the weights survive."""
    rows = []
    for node in graph:
        if not (kind_of(node).weighted and "weight_int" in node.params
                and node.attrs.get("weight_scale")):
            continue
        nonzero, kept_count, peak, error = _weight_fidelity(
            node.params["weight"], node.params["weight_int"], node.attrs["weight_scale"])
        kept = kept_count / nonzero if nonzero else 1.0
        row = {"layer": node.name, "weights": int(np.size(node.params["weight"])),
               "nonzero_kept": kept, "mantissa_bits": mantissa_bits(node.params["weight_int"]),
               "weight_exp": node.attrs.get("weight_exp", 0),
               "max_error": error / peak if peak else 0.0}
        if kept < KEPT_WEIGHTS_WARNING:
            row["warning"] = (f"{node.label()}: keeps {100 * kept:.1f}% of its non-zero weights "
                              "in fixed point; its scale is dominated by another input of its "
                              "population or its weights span a wide range")
        rows.append(row)
    return rows


def _weight_fidelity(weight, weight_int, scale: float,
                     block: int = 2 ** 22) -> tuple[int, int, float, float]:
    """(non-zero weights, of those still non-zero as integers, largest |weight|, largest
    |weight_int / scale - weight|), ``block`` weights at a time: a VGG-16 classifier's 100M
    weights need no float64 copies."""
    w, w_int = np.asarray(weight).reshape(-1), np.asarray(weight_int).reshape(-1)
    nonzero = kept = 0
    peak = error = 0.0
    for b0 in range(0, len(w), block):
        f = w[b0:b0 + block].astype(np.float64)
        i = w_int[b0:b0 + block].astype(np.int64)
        nz = f != 0
        nonzero += int(np.count_nonzero(nz))
        kept += int(np.count_nonzero(i[nz]))
        peak = max(peak, float(np.abs(f).max(initial=0.0)))
        error = max(error, float(np.abs(i / scale - f).max(initial=0.0)))
    return nonzero, kept, peak, error


def mantissa_bits(weight_int, block: int = 2 ** 22) -> int:
    """Signed bits of an integer weight tensor's mantissa under its shared power-of-two
    exponent (Loihi's weights are an 8-bit mantissa with an exponent per synapse group): the
    trailing zero bits every non-zero weight shares are the exponent, not the mantissa.
    Read ``block`` weights at a time (no copy of a 100M-weight layer)."""
    flat = np.asarray(weight_int).reshape(-1)
    shared = top = 0
    for b0 in range(0, len(flat), block):
        w = flat[b0:b0 + block]
        # zeros change neither the OR nor the max, so no copy filters them out
        w = np.abs(w if w.dtype.kind == "i" else w.astype(np.int64))
        shared |= int(np.bitwise_or.reduce(w))
        top = max(top, int(w.max()))
    if not shared:
        return 1
    exponent = (shared & -shared).bit_length() - 1     # the lowest set bit of any weight
    return (top >> exponent).bit_length() + 1


def _tree_bias(graph: Graph, pop: Node) -> np.ndarray:
    """The population's input current when every producer is silent (float64)."""
    values: dict[str, torch.Tensor] = {}
    for node in tree_nodes(graph, pop):
        if is_alignment(node):
            values[node.name] = torch.zeros((1, *node.shape), dtype=torch.float64)
            continue
        xs = [values[i] if i in values else torch.zeros((1, *graph[i].shape), dtype=torch.float64)
              for i in node.inputs]
        values[node.name] = kind_of(node).forward(node, *xs)
    src = pop.inputs[0]
    out = values.get(src, torch.zeros((1, *graph[src].shape), dtype=torch.float64))
    return out[0].numpy()


def _check_ranges(graph: Graph, pop: Node) -> None:
    limit = 2 ** (STATE_BITS - 1) - 1
    big = np.abs(pop.params["bias_int"]).max(initial=0)
    if big > limit:
        raise InputError(f"{pop.label()}: bias needs {int(big).bit_length() + 1} bits after "
                         f"quantization (state is {STATE_BITS}-bit)")
