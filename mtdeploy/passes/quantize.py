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
        if not pop.inputs:
            continue
        # Real per-unit scale of each weighted op's input, and of each unweighted path.
        weighted: dict[str, tuple[Node, float, float]] = {}   # name -> (node, s_in, post)
        gains: list[tuple[Node, int, float]] = []              # (consumer, input idx, gain)
        for edge_node, path in _paths(graph, pop):
            scale = edge_scale(graph, edge_node.name, input_unit)
            w_idx = next((k for k, n in enumerate(path) if kind_of(n).weighted), None)
            if w_idx is None:
                total = scale * math.prod(kind_of(n).divisor(n) for n in path)
                consumer = path[0] if path else pop
                producer_name = edge_node.name
                idx = consumer.inputs.index(producer_name)
                gains.append((consumer, idx, total))
                continue
            wnode = path[w_idx]
            s_in = scale * math.prod(kind_of(n).divisor(n) for n in path[:w_idx])
            post = math.prod(kind_of(n).divisor(n) for n in path[w_idx + 1:])
            if wnode.name in weighted and not math.isclose(weighted[wnode.name][1], s_in):
                raise InputError(f"{wnode.label()}: inputs with different scales")
            weighted[wnode.name] = (wnode, s_in, post)

        peak = max([float(np.abs(n.params["weight"]).max()) * s * p for n, s, p in weighted.values()]
                   + [g for _, _, g in gains] + [0.0])
        if peak <= 0:
            exp = 0
        else:
            exp = int(math.floor(math.log2(wmax / peak)))
        if "threshold" in pop.params:
            threshold = real(f"{pop.label()}: threshold", float(pop.params["threshold"]), 0.0,
                             lo_open=True)
            exp = min(exp, int(math.floor(math.log2(THRESHOLD_MAX / threshold))))
        unit = 2.0 ** -exp

        for node, s_in, post in weighted.values():
            w = node.params["weight"].astype(np.float64) * (s_in * post / unit)
            node.params["weight_int"] = np.clip(np.round(w), -wmax, wmax).astype(np.int32)
            node.attrs["weight_scale"] = s_in * post / unit
        for node in tree_nodes(graph, pop) + [pop]:
            node.attrs.pop("input_gain_int", None)
        for consumer, idx, gain in gains:
            g = consumer.attrs.setdefault("input_gain_int", [1] * len(consumer.inputs))
            g[idx] = int(np.clip(round(gain / unit), -wmax, wmax))
        bias = _tree_bias(graph, pop)
        pop.params["bias_int"] = np.round(bias / unit).astype(np.int64)
        pop.attrs["exp"] = exp
        if "threshold" in pop.params:
            th = max(1, int(round(float(pop.params["threshold"]) / unit)))
            pop.attrs["threshold_int"] = th
            pop.attrs["v_init_int"] = int(math.floor(pop.attrs.get("v_init", 0.5) * th + 0.5))
        _check_ranges(graph, pop)
    return graph


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
