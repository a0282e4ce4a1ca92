"""Timing: each population's active window, latency and throughput (docs/semantics.md §4).

The timing rule is stated once, in :func:`windows`: a population behind an alignment
accumulator starts ``hop_steps`` after every such producer's window has closed (it needs the
whole accumulated current); a streamed edge lets it start ``hop_steps`` after the producer's
output steps begin (the tail of its window). ``hop_steps`` is the target's steps per synapse
hop (a profile's ``timing.hop_steps``; Lava's Dense/Conv processes take 1). An edge whose fan-in
was split into partial-sum stages (``attrs["fan_in_split"]`` on the consumer, set by
:mod:`mtdeploy.targets.fanin`) takes one more hop: producer -> partial compartments -> neuron.

:func:`schedule` applies the rule to a converted graph and stores the result on it (each
population's ``attrs["window"]``, ``graph.meta["schedule"]``); the Lava backend, the energy
estimate, the checker and the reports read it from there.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from mtdeploy.ir.graph import Graph
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import incoming_edges, is_readout, is_source, populations, tree_nodes


def windows(order: Iterable[str], edges: Callable[[str], list[tuple]],
            steps: Callable[[str], int], length: Callable[[str], int],
            hop_steps: int) -> dict[str, tuple[int, int]]:
    """``[start, end)`` of every population, in topological ``order``.

    ``edges(name)`` lists (producer, aligned[, hops]) tuples, ``hops`` the synapse hops on the
    edge (1, or 2 through partial-sum stages); ``steps(name)`` is T (the output steps, the tail
    of the window); ``length(name)`` the window (T, or 2T for TPP). A population without
    producers (the input) occupies [0, length).
    """
    out: dict[str, tuple[int, int]] = {}
    for name in order:
        starts = [(out[p][1] if aligned else out[p][1] - steps(p)) + hop_steps * hops
                  for p, aligned, hops in ((*e, 1)[:3] for e in edges(name))]
        start = max(starts, default=0)
        out[name] = (start, start + length(name))
    return out


def edge_hops(pop, producer: str) -> int:
    """Synapse hops from ``producer`` into population ``pop``: one, plus one where the edge's
    fan-in was split into partial-sum stages (docs/semantics.md §5)."""
    return 1 + (producer in pop.attrs.get("fan_in_split", {}))


def latency(windows_: dict[str, tuple[int, int]], spiking_T: list[int], readout: str,
            pipelined: list[int], hop_steps: int) -> dict:
    """The latency figures: the papers' unweighted mean T, sum and max T, one sample's
    sequential steps (hops included), and the pipelined interval (the longest window)."""
    return {
        "mean_T": sum(spiking_T) / len(spiking_T) if spiking_T else 0.0,
        "sum_T": sum(spiking_T),
        "max_T": max(spiking_T, default=0),
        "sequential_steps": windows_[readout][1],
        "pipeline_interval_steps": max(pipelined, default=0),
        "hop_steps": hop_steps,
    }


def schedule(graph: Graph, hop_steps: int = 1) -> dict:
    """Assign ``attrs.window = [start, end)`` to every population; return schedule.json's content."""
    pops = populations(graph)
    edges = {p.name: incoming_edges(graph, p) for p in pops}
    wins = windows([p.name for p in pops],
                   lambda n: [(e.producer, e.align is not None, edge_hops(graph[n], e.producer))
                              for e in edges[n]],
                   lambda n: int(graph[n].T),
                   lambda n: 1 if is_source(graph[n]) else kind_of(graph[n]).window_length(graph[n]),
                   hop_steps)
    layers, aligns = [], []
    for pop in pops:
        pop.attrs["window"] = list(wins[pop.name])
        for e in edges[pop.name]:
            if e.align:
                a = graph[e.align].attrs
                aligns.append({"node": e.align, "method": a["method"], "from": e.producer,
                               "to": pop.name, "t_in": a["t_in"], "t_out": a["t_out"]})
        layers.append({"name": pop.name, "kind": pop.kind, "neuron": pop.attrs.get("neuron"),
                       "T": pop.T, "window": list(wins[pop.name]), "origin": pop.origin,
                       "producers": sorted({e.producer for e in edges[pop.name]}),
                       "synaptic_delay": synaptic_delay(graph, pop)})
    spiking = [int(p.T) for p in pops if not (is_source(p) or is_readout(p))]
    lat = latency(wins, spiking, graph.output,
                  [w[1] - w[0] for n, w in wins.items() if not is_source(graph[n])], hop_steps)
    total = wins[graph.output][1]
    graph.meta["schedule"] = {"hop_steps": hop_steps, "total_steps": total}
    return {"layers": layers, "alignment": aligns, "latency": lat, "total_steps": total}


def synaptic_delay(graph: Graph, pop) -> int:
    """The longest synaptic delay (steps) on ``pop``'s inputs: a delayed current arrives that
    much later inside the population's window, on top of the hop; what would arrive after the
    window is dropped (mtdeploy.kinds.structure.DelayKind), so the window does not move."""
    return max((int(np.max(n.params["delay"], initial=0)) for n in tree_nodes(graph, pop)
                if kind_of(n).temporal), default=0)


def scheduled(graph: Graph) -> dict:
    """The stored schedule of a graph (``{"hop_steps", "total_steps"}``); schedules a converted
    graph that has none yet (with one step per hop), so every reader sees one schedule."""
    if "schedule" not in graph.meta or any("window" not in p.attrs for p in populations(graph)):
        schedule(graph)
    return graph.meta["schedule"]
