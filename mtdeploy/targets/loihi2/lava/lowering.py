"""Lowering a scheduled MT-SNN graph to Lava processes (docs/semantics.md §1).

Per population: one neuron process (:mod:`.neurons`) and, per incoming edge, the edge's whole
projection as synapse processes (:mod:`.synapses`) followed by the edge's align process or delay
line (:mod:`.timing`). Aligning *after* the synapse is equivalent to the semantics'
align-then-project (the projection is linear and time invariant) and keeps every spike on the
wire binary. Edges into one population meet in the neuron's input port, which sums them
(residual adds).

Timing is the graph's stored schedule, whose ``hop_steps`` must equal ``SYNAPSE_HOP``, the
measured latency of Lava's synapse processes: every Lava synapse process sends the previous
step's result (a spike sent at step t reaches the next process at t+1, for Dense, Sparse and
Conv; see tests/test_lava_processes.py), while the neuron and align processes here receive and
send in the same step.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.snn import Edge, incoming_edges, is_readout, is_source, populations
from mtdeploy.kinds import neuron_of
from mtdeploy.targets.loihi2.lava.layout import lava_shape
from mtdeploy.targets.loihi2.lava.neurons import (NEURON_MODELS, POPULATION_KINDS, neuron_process,
                                                  processes_of)
from mtdeploy.targets.loihi2.lava.procs.process import (DelayLine, Readout, SampleSource,
                                                         WindowDelay)
from mtdeploy.targets.loihi2.lava.synapses import (SynapseInfo, Wire, connect_synapses,
                                                   plan_synapses)
from mtdeploy.targets.loihi2.lava.stages import (COUNT_STAGES, count_stage, count_windows,
                                                  counts_max, tail_entry)
from mtdeploy.targets.loihi2.lava.tables import Build
from mtdeploy.targets.loihi2.lava.timing import (ALIGN_METHODS, delayed_input, samples_in_flight,
                                                 stream_delay, synaptic_delays, timing_process)


@dataclass
class EdgeInfo:
    producer: str
    align: str | None
    method: str | None
    delay: int
    synapse: SynapseInfo
    in_flight: int = 1      # samples the align process holds at once (pipelined runs)

    def describe(self) -> dict:
        s = self.synapse
        return {"from": self.producer, "align": self.align, "method": self.method,
                "synapse": s.synapse, "processes": s.processes, "nnz": s.nnz,
                "max_abs_weight": s.max_abs_weight, "weight_digits": s.digits,
                "partial_sums": s.partial_sums,
                "delay": self.delay, "samples_in_flight": self.in_flight}


@dataclass
class LayerInfo:
    name: str
    kind: str
    neuron: str | None
    T: int
    window: tuple[int, int]
    shape: tuple[int, ...]
    lava_shape: tuple[int, ...]
    processes: Counter = field(default_factory=Counter)
    edges: list[EdgeInfo] = field(default_factory=list)

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "neuron": self.neuron, "T": self.T,
                "window": list(self.window), "shape": list(self.shape),
                "lava_shape": list(self.lava_shape), "processes": dict(self.processes),
                "edges": [e.describe() for e in self.edges]}


@dataclass
class Lowered:
    """The processes of one lowered graph: the root (the sample source), the readout, every
    spiking population's neuron process, and per layer what was built."""

    source: SampleSource
    readout: Readout
    neurons: dict[str, Any]
    layers: dict[str, LayerInfo]


def lower_processes(build: Build, data: np.ndarray) -> Lowered:
    """Build and wire every population's processes; ``data`` (N, *Lava input shape)."""
    source, readout = None, None
    neurons: dict[str, Any] = {}
    layers: dict[str, LayerInfo] = {}
    out_ports: dict[str, Any] = {}
    for pop in populations(build.graph):
        if is_source(pop):
            source = SampleSource(data=data, period=build.period, name=f"{pop.name}:source")
            out_ports[pop.name] = source.s_out
            continue
        neuron, layers[pop.name] = _lower_population(build, pop, out_ports)
        if is_readout(pop):
            readout = neuron
        else:
            neurons[pop.name] = neuron
            out_ports[pop.name] = neuron.s_out
    return Lowered(source, readout, neurons, layers)


def _lower_population(build: Build, pop: Node, out_ports: dict[str, Any]) -> tuple[Any, LayerInfo]:
    """``pop``'s neuron process with every incoming edge wired into it."""
    info = _layer_info(build, pop)
    neuron = neuron_process(build, pop)
    info.processes.update(type(proc).__name__ for proc in processes_of(neuron))
    target = delayed_input(build, pop, neuron)      # the neuron, or its synaptic delays
    if target is not neuron:
        info.processes[type(target.delays).__name__] += 1
    for key, edges in _edge_groups(build.graph, pop).items():
        info.edges.append(_lower_edge(build, pop, key, edges, out_ports, target, info.processes))
    return neuron, info


def _edge_groups(graph: Graph, pop: Node) -> dict[str, list[Edge]]:
    """Incoming edges by the tree input they enter at (align node, or producer): a producer
    streaming into several paths of the tree (no align nodes) is one projection, materialised
    once."""
    groups: dict[str, list[Edge]] = {}
    for edge in incoming_edges(graph, pop):
        groups.setdefault(edge.align or edge.producer, []).append(edge)
    return groups


def _lower_edge(build: Build, pop: Node, key: str, edges: list[Edge], out_ports: dict[str, Any],
                neuron, processes: Counter) -> EdgeInfo:
    """producer -> synapses -> [align process | delay line] -> neuron, for one edge group
    (or, through a counts stage, producer -> align -> stage -> synapses -> neuron)."""
    edge = edges[0]
    head = count_stage(build, pop, edge)
    if head is not None:
        return _lower_counts_edge(build, pop, edge, head, len(edges) == 1, out_ports, neuron,
                                  processes)
    stage, delay = timing_process(build, pop, edge, key)
    target = neuron.a_in
    if stage is not None:
        processes[type(stage).__name__] += 1
        stage.a_out.connect(neuron.a_in)
        target = stage.a_in
    wire = Wire(build.graph[edge.producer], key, edge.entry if len(edges) == 1 else None,
                out_ports[edge.producer], target)
    synapse = connect_synapses(build, pop, wire)
    depth = int(stage.proc_params.get("depth", 1)) if stage is not None else 1
    return _edge_info(build, edge, delay, synapse, processes, depth)


def _lower_counts_edge(build: Build, pop: Node, edge: Edge, head: Node, single: bool,
                       out_ports: dict[str, Any], neuron, processes: Counter) -> EdgeInfo:
    """producer -> avg-repeat align (counts) -> the head's stage process -> synapses of the
    rest of the tree (graded counts) -> neuron (stages.py)."""
    graph, producer = build.graph, build.graph[edge.producer]
    align_node = graph[edge.align]
    in_start, out_start, depth = count_windows(build, pop, edge)
    align = ALIGN_METHODS.of("avg-repeat", align_node)(build, align_node, in_start, out_start,
                                                       lava_shape(producer.shape))
    stage = COUNT_STAGES.of(head.kind, head)(build, head)
    out_ports[edge.producer].connect(align.a_in)
    align.a_out.connect(stage.a_in)
    processes.update([type(align).__name__, type(stage).__name__])
    wire = Wire(producer, head.name, tail_entry(graph, head, single), stage.a_out, neuron.a_in,
                counts_max=counts_max(build, edge, head))
    return _edge_info(build, edge, 0, connect_synapses(build, pop, wire), processes, depth)


def _layer_info(build: Build, pop: Node) -> LayerInfo:
    return LayerInfo(pop.name, pop.kind, pop.attrs.get("neuron"), int(pop.T), build.window(pop),
                     tuple(pop.shape), lava_shape(pop.shape))


def _edge_info(build: Build, edge: Edge, delay: int, synapse: SynapseInfo,
               processes: Counter, depth: int = 1) -> EdgeInfo:
    processes[synapse.synapse] += synapse.processes
    if synapse.partial_sums:
        processes["PartialSum"] += synapse.partial_sums
    method = build.graph[edge.align].attrs["method"] if edge.align else None
    return EdgeInfo(edge.producer, edge.align, method, delay, synapse, depth)


# ---- describing without building ------------------------------------------------------------
def plan_layers(build: Build) -> dict[str, LayerInfo]:
    """Per layer, what :func:`lower_processes` builds (process kinds and counts, windows, each
    edge's synapses with their non-zeros and digits), decided without building a process or
    a matrix: the compile report's Lava description at any network size."""
    layers: dict[str, LayerInfo] = {}
    for pop in populations(build.graph):
        if is_source(pop):
            continue
        info = layers[pop.name] = _layer_info(build, pop)
        info.processes[_neuron_process_name(pop)] += 1
        if synaptic_delays(build, pop) is not None:
            info.processes[WindowDelay.__name__] += 1
        for key, edges in _edge_groups(build.graph, pop).items():
            edge = edges[0]
            head = count_stage(build, pop, edge)
            if head is not None:
                info.edges.append(_plan_counts_edge(build, pop, edge, head, len(edges) == 1,
                                                    info.processes))
                continue
            stage, delay = _timing_process_name(build, pop, edge)
            if stage is not None:
                info.processes[stage] += 1
            wire = Wire(build.graph[edge.producer], key, edge.entry if len(edges) == 1 else None,
                        None, None)
            synapse = plan_synapses(build, pop, wire).info
            info.edges.append(_edge_info(build, edge, delay, synapse, info.processes,
                                         samples_in_flight(build, pop, edge)))
    return layers


def _plan_counts_edge(build: Build, pop: Node, edge: Edge, head: Node, single: bool,
                      processes: Counter) -> EdgeInfo:
    """What :func:`_lower_counts_edge` builds, without building it."""
    graph = build.graph
    align_node = graph[edge.align]
    processes.update([_returned(ALIGN_METHODS.of("avg-repeat", align_node)),
                      _returned(COUNT_STAGES.of(head.kind, head))])
    wire = Wire(graph[edge.producer], head.name, tail_entry(graph, head, single), None, None,
                counts_max=counts_max(build, edge, head))
    synapse = plan_synapses(build, pop, wire).info
    return _edge_info(build, edge, 0, synapse, processes, count_windows(build, pop, edge)[2])


def _returned(builder) -> str | None:
    """The process class a builder returns, from its return annotation."""
    name = getattr(builder, "__annotations__", {}).get("return")
    return name if isinstance(name, str) else getattr(name, "__name__", None)


def _neuron_process_name(pop: Node) -> str:
    """The class :func:`neuron_process` builds for ``pop``; a population kind whose builder
    names none picks its process by neuron model."""
    builder = POPULATION_KINDS.of(pop.kind, pop)
    namer = getattr(builder, "process_name", None)     # a builder whose process varies
    name = namer(pop) if namer is not None else _returned(builder)
    return name or _returned(NEURON_MODELS.of(neuron_of(pop).name, pop))


def _timing_process_name(build: Build, pop: Node, edge: Edge) -> tuple[str | None, int]:
    """What :func:`timing_process` builds for the edge: (class or None, delay)."""
    if edge.align is not None:
        node = build.graph[edge.align]
        return _returned(ALIGN_METHODS.of(node.attrs["method"], node)), 0
    delay = stream_delay(build, pop, build.graph[edge.producer])
    return (DelayLine.__name__ if delay else None), delay
