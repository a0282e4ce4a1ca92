"""Fixed-point quantization: units per output channel or power-of-two units per population,
integer weights, gains, thresholds.

Implements docs/semantics.md §3. Every scale that the float network applies between two
populations (the producer's spike value, 1/t_in of averaging, TTM's t_out/t_in, average
pooling's 1/k) is folded into the one weighted op of each path, so the hardware only ever
adds integer weights and compares against an integer threshold. With ``per_channel`` (the
default where the target has per-neuron thresholds) each output channel gets its own unit, so
every channel's largest weight is +-wmax however small its weights; its threshold (one integer
per neuron) carries the scale, and the spike still means the population's one real threshold.
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
from mtdeploy.kinds.neurons import CHANNEL_UNIT, int_thresholds, unit_shaped
from mtdeploy.passes.bias_correction import correct_biases
from mtdeploy.validate import integer, real

STATE_BITS = 24
THRESHOLD_MAX = 2 ** 20   # leaves headroom in the 24-bit membrane for T * current
BITS_RANGE = (2, 16)      # weight and input bits: 1 bit has no magnitude, >16 no hardware
#: the real-valued input reaches the first layer as graded values this wide. Loihi 2's graded
#: spikes carry 24 (Lava) to 32 bits, and 12 bits gain random mixed-level CNNs about 1.5 points
#: of argmax agreement (bench_quantization.py), but 8 keeps a first layer's integer bias
#: within stock netx's 13-bit bias mantissa, so the NetX file's stock layers stay loadable
DEFAULT_INPUT_BITS = 8
#: per-channel units tried between peak/wmax and peak/(wmax * (1 - UNIT_SEARCH_SPAN))
UNIT_CANDIDATES, UNIT_SEARCH_SPAN = 32, 1 / 8
#: channels with more inputs than this keep peak/wmax: the best of several grids beats the
#: finest by about 1/sqrt(fan-in) (nothing at a classifier's 25,088 inputs), and searching
#: VGG-16's 2.9M weights of fan-in <= 4,096 took 8.6 s of a 224 px compile
UNIT_SEARCH_FAN_IN = 1024


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


def quantize(graph: Graph, weight_bits: int = 8, input_bits: int = DEFAULT_INPUT_BITS,
             per_channel: bool = True, calib=None) -> Graph:
    """Add integer parameters to a converted graph (in place; returns it). ``per_channel``:
    a unit per output channel (needs per-neuron thresholds on the target); False: one
    power-of-two unit per population (``--per-layer-scaling``). ``calib``: sample inputs
    (N, *input_shape); each neuron's bias then also absorbs the mean current that rounding
    the weights costs it on them (passes/bias_correction.py), from at most
    512 of them (fewer for a large network)."""
    if not graph.meta.get("converted"):
        raise InputError("quantize needs a converted graph (run mtdeploy.passes.convert first)")
    weight_bits = integer("weight_bits", weight_bits, *BITS_RANGE)
    input_bits = integer("input_bits", input_bits, *BITS_RANGE)
    wmax = 2 ** (weight_bits - 1) - 1
    input_max = float(graph.meta.get("input_max", 1.0))
    graph.meta["input_exp"] = int(math.floor(math.log2((2 ** (input_bits - 1) - 1) / input_max)))
    graph.meta.update({"weight_bits": weight_bits, "input_bits": input_bits, "quantized": True,
                       "per_channel": bool(per_channel)})
    input_unit = 2.0 ** -graph.meta["input_exp"]
    for pop in populations(graph):
        if pop.inputs:
            _quantize_population(graph, pop, wmax, input_unit, bool(per_channel))
    graph.meta.pop("bias_correction", None)
    if calib is not None and len(calib):
        graph.meta["bias_correction"] = {"samples": correct_biases(graph, calib)}
        for pop in populations(graph):
            if pop.inputs:
                _check_ranges(graph, pop)
    return graph


def per_layer_copy(graph: Graph, max_input_bits: int | None = None) -> Graph:
    """A quantized graph again with one unit per population (what a target without per-neuron
    thresholds runs, e.g. stock NetX's one ``vThMant`` per layer) and inputs at most
    ``max_input_bits`` wide; ``graph`` itself when it already is that. Biases are not
    corrected (the calibration data is not kept)."""
    if not graph.meta.get("quantized"):
        return graph
    bits = int(graph.meta["input_bits"])
    narrower = max_input_bits is not None and bits > max_input_bits
    if not narrower and not any(CHANNEL_UNIT in n.params for n in graph):
        return graph
    return quantize(graph.copy(), graph.meta["weight_bits"],
                    max_input_bits if narrower else bits, per_channel=False)


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


def _quantize_population(graph: Graph, pop: Node, wmax: int, input_unit: float,
                         per_channel: bool) -> None:
    """Units for the population's current (its threshold and bias): one per output channel
    where ``per_channel`` allows it (:func:`_channel_units`), else one power of two for the
    population. A single branch sets a unit from its peak, so its weights use the whole
    mantissa. Where branches join (a residual add), the unit comes from the finest branch and
    every other branch keeps its full mantissa too, scaled into the shared accumulator by a
    power of two of its own (a synapse group's weight exponent), so no branch is rounded away
    by another's range."""
    weighted, gains = _branches(graph, pop, input_unit)
    peaks = [_peak(n.params["weight"]) * s * p for n, s, p in weighted.values()]
    joined = len(weighted) + len(gains) > 1
    finest = [v for v in (peaks if joined and any(peaks) else peaks + [g for *_, g in gains]) if v > 0]
    peak = (min(finest) if joined else max(finest)) if finest else 0.0
    exp = int(math.floor(math.log2(wmax / peak))) if peak > 0 else 0
    if "threshold" in pop.params:
        threshold = real(f"{pop.label()}: threshold", float(pop.params["threshold"]), 0.0,
                         lo_open=True)
        exp = min(exp, int(math.floor(math.log2(THRESHOLD_MAX / threshold))))
    pop.params.pop(CHANNEL_UNIT, None)
    bias = _tree_bias(graph, pop)
    unit = 2.0 ** -exp
    units = _channel_units(graph, pop, weighted, wmax, unit, bias) \
        if per_channel and not gains else None
    if units is not None:
        pop.params[CHANNEL_UNIT] = units
    for node, s_in, post in weighted.values():
        scale = s_in * post / (unit if units is None else units)
        mantissa, shift = _mantissa(node.params["weight"], wmax, scale)
        mantissa <<= shift
        node.params["weight_int"] = mantissa
        node.attrs["weight_scale"] = scale if np.ndim(scale) == 0 else float(np.max(scale))
        node.params.pop("weight_scale", None)
        if np.ndim(scale):
            node.params["weight_scale"] = np.asarray(scale, np.float64)
        node.attrs["weight_exp"] = shift
    for node in tree_nodes(graph, pop) + [pop]:
        node.attrs.pop("input_gain_int", None)
    for consumer, idx, gain in gains:
        g = consumer.attrs.setdefault("input_gain_int", [1] * len(consumer.inputs))
        mantissa, shift = _mantissa(np.asarray([gain / unit], np.float64), wmax)
        g[idx] = int(mantissa[0]) << shift
    pop_unit = unit if units is None else unit_shaped(pop, units)
    pop.params["bias_int"] = np.round(bias / pop_unit).astype(np.int64)
    pop.attrs["exp"] = exp
    if "threshold" in pop.params:
        pop.attrs["threshold_int"] = max(1, int(round(float(pop.params["threshold"]) / unit)))
        pop.attrs["v_init_int"] = int(math.floor(pop.attrs.get("v_init", 0.5)
                                                 * pop.attrs["threshold_int"] + 0.5))
        if units is not None:    # the largest per-neuron values, for range rules
            th, v0 = int_thresholds(pop)
            pop.attrs["threshold_int"], pop.attrs["v_init_int"] = int(th.max()), int(v0.max())
    _check_ranges(graph, pop)


def _peak(values) -> float:
    """max |values| without an |values| copy (a VGG-16 classifier holds 100M weights)."""
    values = np.asarray(values)
    return float(max(values.max(initial=0.0), -values.min(initial=0.0))) if values.size else 0.0


#: a channel's unit is at most this much finer than its bias allows (|bias_int| <= 2^BIAS_BITS)
BIAS_BITS = 20


def _channel_units(graph: Graph, pop: Node, weighted: dict, wmax: int, layer_unit: float,
                   bias: np.ndarray):
    """Each output channel's unit (float64), the finest weighted branch's peak in that channel
    over ``wmax`` (so that peak is exactly +-wmax), no finer than the threshold's and the
    bias's range allow and no coarser than ``layer_unit`` (a channel without weights keeps
    it); None where channels do not map one-to-one from every weighted op to ``pop`` (a
    flatten between them) or ``pop`` has one channel."""
    c = pop.shape[0] if pop.shape else 0
    if c < 2 or not weighted or not all(_channel_path(graph, n, pop) for n, *_ in weighted.values()):
        return None
    peaks = np.full(c, np.inf)
    for node, s_in, post in weighted.values():
        rows = np.asarray(node.params["weight"]).reshape(c, -1)
        peak = np.maximum(rows.max(1), -rows.min(1)).astype(np.float64) * s_in * post
        peaks = np.minimum(peaks, np.where(peak > 0, peak, np.inf))
    units = np.where(np.isfinite(peaks), peaks / wmax, layer_unit)
    if "threshold" in pop.params:
        units = np.maximum(units, float(pop.params["threshold"]) / THRESHOLD_MAX)
    units = np.maximum(units, np.abs(bias).reshape(c, -1).max(1) / 2.0 ** BIAS_BITS)
    units = np.minimum(units, layer_unit)
    if len(weighted) == 1:      # only coarser grids: every range above still holds
        node, s_in, post = next(iter(weighted.values()))
        units = _searched_units(np.asarray(node.params["weight"]).reshape(c, -1),
                                units, wmax, s_in * post, layer_unit)
    return units.astype(np.float64)


def _searched_units(rows: np.ndarray, units: np.ndarray, wmax: int, scale: float,
                    coarsest: float) -> np.ndarray:
    """Per channel (a row of real weights ``rows * scale``), the unit among
    :data:`UNIT_CANDIDATES` from ``units`` (peak/wmax) to UNIT_SEARCH_SPAN coarser, never
    coarser than ``coarsest``, that rounds the channel's weights with the least squared error.
    Grids only get coarser, so the peak stays within +-wmax; a few weights (a first layer's
    3x3x3 kernel) often fit a slightly coarser grid far better. The threshold is an integer
    per neuron either way."""
    if rows.shape[1] > UNIT_SEARCH_FAN_IN or not rows.size:
        return units
    real_rows = rows.astype(np.float64) * scale
    best, best_err = units.copy(), np.full(units.shape, np.inf)
    for peak_int in np.linspace(wmax, wmax * (1 - UNIT_SEARCH_SPAN), UNIT_CANDIDATES):
        unit = (units * (wmax / peak_int))[:, None]
        # no clip needed: every candidate is at least peak/wmax, so |rows / unit| <= wmax
        err = np.square(real_rows - np.rint(real_rows / unit) * unit).sum(1)
        unit = unit[:, 0]
        better = (err < best_err) & (unit <= coarsest)   # strict: ties keep the finer grid
        best[better], best_err[better] = unit[better], err[better]
    return best


def _channel_path(graph: Graph, wnode: Node, pop: Node) -> bool:
    """Whether output channel k of ``wnode`` feeds only channel k of ``pop``: every node from
    it to ``pop`` keeps the channel axis (a pool or an add does; a flatten does not)."""
    c = pop.shape[0]
    if tuple(wnode.shape[:1]) != (c,) or len(wnode.shape) != len(pop.shape):
        return False
    tree = {n.name for n in tree_nodes(graph, pop)}
    frontier, seen = [wnode.name], set()
    while frontier:
        name = frontier.pop()
        for node in graph:
            if name in node.inputs and node.name not in seen and (node.name in tree or node is pop):
                if len(node.shape) != len(pop.shape) or node.shape[0] != c:
                    return False
                seen.add(node.name)
                if node is not pop:
                    frontier.append(node.name)
    return True


def _mantissa(values: np.ndarray, wmax: int, scale=1.0,
              block: int = 2 ** 22) -> tuple[np.ndarray, int]:
    """``values * scale`` (in float64) as ``mantissa << shift`` (int32): the smallest
    power-of-two shift >= 0 that fits the rounded values into [-wmax, wmax] (0 for values
    already in range, as a single branch's). ``scale`` is a number or one per row (output
    channel) of ``values``. Rounded about ``block`` values at a time, so a VGG-16
    classifier's 100M weights need no float64 copy."""
    values = np.asarray(values)
    scale = np.asarray(scale, np.float64)
    rows = values.reshape(scale.size if scale.ndim else 1, -1)
    scale = scale.reshape(-1, 1) if scale.ndim else scale.reshape(1, 1)
    # float64(v) * scale rounds monotonically, so the peak is the scaled largest |value|
    peak = float(np.max(np.maximum(rows.max(1, initial=0.0), -rows.min(1, initial=0.0))
                        * scale[:, 0], initial=0.0))
    shift = max(0, math.ceil(math.log2(peak / (wmax + 0.5)))) if peak > wmax + 0.5 else 0
    out = np.empty(rows.shape, np.int32)
    step = max(1, block // max(1, rows.shape[1]))
    for r0 in range(0, rows.shape[0], step):
        for c0 in range(0, rows.shape[1], block):
            chunk = np.multiply(rows[r0:r0 + step, c0:c0 + block], scale[r0:r0 + step],
                                dtype=np.float64)     # float64(v) * scale, one array
            if shift:
                chunk /= 2.0 ** shift
            np.rint(chunk, out=chunk)
            np.maximum(chunk, -wmax, out=chunk)      # np.clip, in a third of its time
            np.minimum(chunk, wmax, out=chunk)
            out[r0:r0 + step, c0:c0 + block] = chunk
    return out.reshape(values.shape), shift


#: a layer that keeps fewer of its non-zero weights than this after rounding gets a warning
KEPT_WEIGHTS_WARNING = 0.9


def quantization_report(graph: Graph) -> list[dict]:
    """Per weighted layer of a quantized graph: the share of its non-zero weights that stay
    non-zero, the mantissa bits used (its effective bits), the largest rounding error relative
    to its largest weight, and whether its units are per channel or per layer; ``warning``
    where fewer than :data:`KEPT_WEIGHTS_WARNING` of the weights survive."""
    rows = []
    for node in graph:
        if not (kind_of(node).weighted and "weight_int" in node.params
                and node.attrs.get("weight_scale")):
            continue
        scale = node.params.get("weight_scale", node.attrs["weight_scale"])
        nonzero, kept_count, peak, error = _weight_fidelity(
            node.params["weight"], node.params["weight_int"], scale)
        kept = kept_count / nonzero if nonzero else 1.0
        row = {"layer": node.name, "weights": int(np.size(node.params["weight"])),
               "nonzero_kept": kept, "mantissa_bits": mantissa_bits(node.params["weight_int"]),
               "weight_exp": node.attrs.get("weight_exp", 0),
               "max_error": error / peak if peak else 0.0,
               "units": "per channel" if np.ndim(scale) else "per layer"}
        if kept < KEPT_WEIGHTS_WARNING:
            row["warning"] = (f"{node.label()}: keeps {100 * kept:.1f}% of its non-zero weights "
                              "in fixed point; its scale is dominated by another input of its "
                              "population or its weights span a wide range")
        rows.append(row)
    return rows


def _weight_fidelity(weight, weight_int, scale, block: int = 2 ** 22
                     ) -> tuple[int, int, float, float]:
    """(non-zero weights, of those still non-zero as integers, largest |weight|, largest
    |weight_int / scale - weight|), about ``block`` weights at a time: a VGG-16 classifier's
    100M weights need no float64 copies. ``scale``: one number, or one per output channel."""
    w = np.asarray(weight)
    w = w.reshape(len(w), -1) if w.ndim > 1 else w.reshape(1, -1)
    w_int = np.asarray(weight_int).reshape(w.shape)
    scale = np.asarray(scale, np.float64)
    per_row = scale.reshape(-1, 1) if scale.ndim else np.full((len(w), 1), float(scale))
    rows = max(1, block // max(w.shape[1], 1))
    nonzero = kept = 0
    peak = error = 0.0
    for r0 in range(0, len(w), rows):
        f, i = w[r0:r0 + rows], w_int[r0:r0 + rows]
        nz = f != 0
        nonzero += int(np.count_nonzero(nz))
        kept += int(np.count_nonzero(nz & (i != 0)))
        peak = max(peak, _peak(f))
        # (the integers divide exactly as float64, and the weights widen exactly to it)
        diff = np.true_divide(i, per_row[r0:r0 + rows], dtype=np.float64)
        diff -= f
        error = max(error, _peak(diff))
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
    """The population's input current when every producer is silent (float64); a node all of
    whose inputs are still zero gives its ``forward_at_zero`` (a weighted op its bias)."""
    values: dict[str, torch.Tensor] = {}
    zero = set()         # nodes whose output is still all zeros
    for node in tree_nodes(graph, pop):
        if is_alignment(node):
            values[node.name] = torch.zeros((1, *node.shape), dtype=torch.float64)
            zero.add(node.name)
            continue
        xs = [values[i] if i in values else torch.zeros((1, *graph[i].shape), dtype=torch.float64)
              for i in node.inputs]
        kind = kind_of(node)
        if all(i in zero or i not in values for i in node.inputs):
            values[node.name] = kind.forward_at_zero(node, *xs)
            if not torch.any(values[node.name]):
                zero.add(node.name)
        else:
            values[node.name] = kind.forward(node, *xs)
    src = pop.inputs[0]
    out = values.get(src, torch.zeros((1, *graph[src].shape), dtype=torch.float64))
    return out[0].numpy()


def _check_ranges(graph: Graph, pop: Node) -> None:
    limit = 2 ** (STATE_BITS - 1) - 1
    big = np.abs(pop.params["bias_int"]).max(initial=0)
    if big > limit:
        raise InputError(f"{pop.label()}: bias needs {int(big).bit_length() + 1} bits after "
                         f"quantization (state is {STATE_BITS}-bit)")
