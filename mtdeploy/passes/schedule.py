"""Timing: each population's active window, latency and throughput (docs/semantics.md §4)."""
from __future__ import annotations

from mtdeploy.ir.graph import Graph
from mtdeploy.ir.snn import incoming_edges, populations


def window_length(node) -> int:
    """Steps a population is busy: T, or 2T for a TPP neuron (accumulate, then fire)."""
    return 2 * node.T if node.attrs.get("neuron") == "tpp" else node.T


def schedule(graph: Graph, hop_delay: int = 1) -> dict:
    """Assign ``attrs.window = [start, end)`` to every population; return schedule.json's content.

    A population behind alignment nodes starts once every producer's window has closed (it needs
    the whole accumulated current); a streamed edge lets it start one hop after its producer.
    """
    windows: dict[str, tuple[int, int]] = {}
    layers, aligns = [], []
    for pop in populations(graph):
        if pop.kind == "input":
            windows[pop.name] = (0, 1)
        else:
            starts = []
            for e in incoming_edges(graph, pop):
                p_start, p_end = windows[e.producer]
                out_start = p_end - graph[e.producer].T   # output steps: the window's tail
                starts.append((p_end if e.align else out_start) + hop_delay)
                if e.align:
                    a = graph[e.align].attrs
                    aligns.append({"node": e.align, "method": a["method"], "from": e.producer,
                                   "to": pop.name, "t_in": a["t_in"], "t_out": a["t_out"]})
            start = max(starts)
            windows[pop.name] = (start, start + window_length(pop))
        pop.attrs["window"] = list(windows[pop.name])
        layers.append({"name": pop.name, "kind": pop.kind, "neuron": pop.attrs.get("neuron"),
                       "T": pop.T, "window": list(windows[pop.name]), "origin": pop.origin,
                       "producers": sorted({e.producer for e in incoming_edges(graph, pop)})
                       if pop.kind != "input" else []})
    spiking = [p for p in populations(graph) if p.kind not in ("input", "readout")]
    ts = [p.T for p in spiking]
    readout_end = windows[graph.output][1]
    latency = {
        "mean_T": sum(ts) / len(ts) if ts else 0.0,     # the papers' unweighted figure
        "sum_T": sum(ts),
        "max_T": max(ts) if ts else 0,
        "sequential_steps": readout_end,                # one sample alone, hops included
        "pipeline_interval_steps": max(window_length(p) for p in populations(graph)
                                       if p.kind != "input"),
        "hop_delay": hop_delay,
    }
    sched = {"layers": layers, "alignment": aligns, "latency": latency,
             "total_steps": readout_end}
    graph.meta["schedule"] = {"hop_delay": hop_delay, "total_steps": readout_end}
    return sched
