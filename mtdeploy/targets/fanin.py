"""Fan-in splitting: a neuron whose inputs exceed one core becomes partial-sum stages.

A consumer neuron reads a box of producer neurons per edge (resources.py). When one neuron's
fan-in axons or synaptic memory exceed a core, the edge's producer space (C, H, W) is cut into
blocks and each block gets a *stage*: a population of non-spiking partial-sum compartments, one
per consumer neuron, that sums that block's share of the consumer's current and forwards it
(a graded message, one more hop) to the consumer, which adds the K partial sums. Integer
addition is associative, so the consumer's current is bit for bit what it was; only the timing
changes (one extra hop, counted by the schedule: ``passes.schedule.edge_hops``).

The split is chosen here, from the profile, and stored on the consumer
(``attrs["fan_in_split"] = {producer: [blocks along C, H, W]}``) by :func:`mark_fan_in_splits`
before the graph is scheduled; the budget model costs the stages (:func:`with_stages`) and the
Lava backend builds them (one Dense per block into a ``PartialSum`` process). Blocks are cut
along channels first (every neuron of a conv reads all its input channels), then rows, then
columns, to the fewest blocks whose piece of any neuron's box fits a core. One level of stages
reaches fan-ins up to the square of a core's limit (10^9 axons on Loihi 2).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mtdeploy.ir.graph import Graph
from mtdeploy.targets.resources import Network, Population, Synapses, extract, weight_bits

Blocks = tuple[int, int, int]


def _counts(n: int) -> list[int]:
    """Block counts whose largest block sizes differ, ascending."""
    return sorted({-(-n // s) for s in range(1, n + 1)})


def _bits_per_synapse(edge: Synapses, net: Network, profile) -> float:
    """The cheapest encoding's bits per synapse of one neuron (as ``single_neuron_cost``)."""
    wb = weight_bits(edge, net, profile)
    return min(wb, edge.density * (wb + profile.sparse_index_bits))


def blocks_for(edge: Synapses, producer_shape, piece: float) -> Blocks:
    """The fewest blocks (channels first, then rows, then columns) such that every consumer
    neuron reads at most ``piece`` producer neurons of any one block."""
    longest = [int(length.max(initial=0)) for length in edge.lengths()]
    counts = [1, 1, 1]

    def worst(c):
        return math.prod(min(l, -(-n // k)) for l, n, k in zip(longest, producer_shape, c))

    for d in range(3):
        for k in _counts(int(producer_shape[d])):
            counts[d] = k
            if worst(counts) <= piece:
                return tuple(counts)
    return tuple(counts)


def plan_splits(net: Network, profile) -> dict[str, dict[str, Blocks]]:
    """{consumer: {producer: blocks}} for every population one of whose neurons needs more
    fan-in axons or synaptic memory than a core has; the widest edges are split first, until
    the consumer's own fan-in (its other edges plus one axon per stage) fits."""
    axons, memory = float(profile.fan_in_axons), float(profile.synaptic_memory_bytes * 8)
    plans: dict[str, dict[str, Blocks]] = {}
    for pop in net.populations.values():
        if not pop.on_chip:
            continue
        need = {id(e): (float(e.max_fan_in(pop.shape)), _bits_per_synapse(e, net, profile))
                for e in pop.edges}
        fan_in = {k: f for k, (f, _) in need.items()}
        syn = {k: f * b for k, (f, b) in need.items()}
        for e in sorted(pop.edges, key=lambda e: -fan_in[id(e)]):
            if sum(fan_in.values()) <= axons and sum(syn.values()) <= memory:
                break
            f, bits = need[id(e)]
            if f <= 1:
                continue
            piece = max(1.0, min(axons, memory // max(bits, 1e-9)))
            blocks = blocks_for(e, net.populations[e.producer].shape, piece)
            if math.prod(blocks) <= 1:
                continue
            plans.setdefault(pop.name, {})[e.producer] = blocks
            fan_in[id(e)] = float(math.prod(blocks))
            syn[id(e)] = fan_in[id(e)] * weight_bits(e, net, profile)
    return plans


def mark_fan_in_splits(graph: Graph, profile) -> dict[str, dict[str, Blocks]]:
    """Choose the splits of a converted graph for ``profile`` and store them on the consumers
    (before the schedule, which counts their extra hop); returns them."""
    plans = plan_splits(extract(graph, profile.hop_steps), profile)
    for node in graph:
        node.attrs.pop("fan_in_split", None)
    for name, split in plans.items():
        graph[name].attrs["fan_in_split"] = {p: list(b) for p, b in split.items()}
    return plans


def block_bounds(n: int, k: int) -> np.ndarray:
    """The k + 1 bounds of k even blocks of n (the one definition of the blocks: the Lava
    lowering masks its matrices with the same)."""
    return (np.arange(k + 1, dtype=np.int64) * n) // k


def _stage_edges(edge: Synapses, producer_shape, blocks: Blocks) -> list[Synapses]:
    """The edge restricted to each block of the producer (C-order blocks)."""
    bounds = [block_bounds(int(n), int(k)) for n, k in zip(producer_shape, blocks)]
    out = []
    for index in np.ndindex(*blocks):
        lo = tuple(np.clip(l, bounds[d][i], bounds[d][i + 1])
                   for d, (l, i) in enumerate(zip(edge.lo, index)))
        hi = tuple(np.maximum(np.clip(h, bounds[d][i], bounds[d][i + 1]), lo[d])
                   for d, (h, i) in enumerate(zip(edge.hi, index)))
        out.append(replace(edge, lo=lo, hi=hi, aligned=False, weighted=list(edge.weighted)))
    return out


def _unit_edge(stage: Population, edge: Synapses, first: bool) -> Synapses:
    """Stage -> consumer: each consumer neuron reads its own partial sum (weight 1); the first
    carries the edge's alignment accumulator and gain (the sum of the partials is the edge's)."""
    ident = [np.arange(n, dtype=np.int64) for n in stage.shape]
    return Synapses(stage.name, (0, 1, 2), tuple(ident), tuple(i + 1 for i in ident),
                    edge.aligned and first, edge.t_in, True, 1.0, edge.weight_bits,
                    edge.gain if first else 0.0, [], 0)


def with_stages(net: Network, splits: dict[str, dict[str, Blocks]]) -> Network:
    """``net`` with every split edge replaced by its stage populations (placed just before
    their consumer) and the consumer's unit edges from them; windows for the stages: the
    producer's output steps, one hop later."""
    if not splits:
        return net
    pops: dict[str, Population] = {}
    windows = dict(net.windows)
    for pop in net.populations.values():
        split = splits.get(pop.name, {})
        edges = []
        for e in pop.edges:
            if e.producer not in split:
                edges.append(e)
                continue
            producer = net.populations[e.producer]
            parts = _stage_edges(e, producer.shape, split[e.producer])
            for b, part in enumerate(parts):
                name = f"{pop.name}/partial.{e.producer}.{b}"
                stage = Population(name, f"{pop.label} [partial sums {b + 1}/{len(parts)} of "
                                   f"{producer.label}]", pop.shape, producer.T, producer.T, True,
                                   [part], None, stage_of=pop.name)
                pops[name] = stage
                end = net.windows[e.producer][1] if e.producer in net.windows else producer.T
                windows[name] = (end - producer.T + net.hop_steps, end + net.hop_steps)
                edges.append(_unit_edge(stage, e, b == 0))
        pops[pop.name] = replace(pop, edges=edges)
    return replace(net, populations=pops, windows=windows)
