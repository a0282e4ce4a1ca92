"""Processes that put an edge's current into its consumer's window, read from the graph's stored
schedule: the align process of an aligned edge (per method), a DelayLine for a streamed edge
that must wait for the consumer's other inputs.

Both sit after the edge's synapse, which delivers one hop (``hop_steps``) late.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
import numpy as np

from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import Edge, incoming_edges, tree_nodes
from mtdeploy.passes.schedule import edge_hops
from mtdeploy.targets.loihi2.lava.layout import lava_shape, one_to_lava
from mtdeploy.targets.loihi2.lava.procs.process import (AlignAvgRepeat, AlignTTM, DelayLine,
                                                         WindowDelay, in_flight)
from mtdeploy.targets.loihi2.lava.tables import Build, BuilderTable

#: (build, align node, first input step, first output step, Lava shape) -> the align process
AlignBuilder = Callable[[Build, Node, int, int, tuple], Any]

#: alignment method (an align node's ``attrs["method"]``) -> its Lava process
ALIGN_METHODS: BuilderTable[AlignBuilder] = BuilderTable("alignment method")


@ALIGN_METHODS.register("avg-repeat")
def _avg_repeat(build: Build, node: Node, in_start: int, out_start: int,
                shape: tuple) -> AlignAvgRepeat:
    t_in, t_out = int(node.attrs["t_in"]), int(node.attrs["t_out"])
    return AlignAvgRepeat(shape=shape, in_window=(in_start, in_start + t_in),
                          out_window=(out_start, out_start + t_out), period=build.period,
                          name=_name(node))


@ALIGN_METHODS.register("ttm")
def _time_to_match(build: Build, node: Node, in_start: int, out_start: int,
                   shape: tuple) -> AlignTTM:
    return AlignTTM(shape=shape, in_start=in_start, t_in=int(node.attrs["t_in"]),
                    out_start=out_start, t_out=int(node.attrs["t_out"]), period=build.period,
                    name=_name(node))


def _name(node: Node) -> str:
    return f"{node.name}:{node.attrs['method']}"


def first_arrival(build: Build, producer: Node, pop: Node) -> int:
    """Step at which the producer's first output step (the tail of its window) arrives at
    ``pop``: behind one synapse, or two hops through partial-sum stages (the schedule's
    ``edge_hops``)."""
    return build.window(producer)[1] - int(producer.T) + build.hop * edge_hops(pop, producer.name)


def stream_delay(build: Build, pop: Node, producer: Node) -> int:
    """Steps a streamed edge must wait: the consumer starts at the latest of its inputs, which
    can be after this producer's first output arrives."""
    delay = build.window(pop)[0] - first_arrival(build, producer, pop)
    if delay < 0:
        raise InputError(f"{pop.label()}: starts before its streamed input {producer.label()} "
                         "arrives; the schedule is inconsistent")
    return delay


def samples_in_flight(build: Build, pop: Node, edge: Edge) -> int:
    """Samples the edge's align process holds at once in a pipelined run (what its process
    computes from the same windows): 1 for a streamed edge."""
    if edge.align is None:
        return 1
    node = build.graph[edge.align]
    first = first_arrival(build, build.graph[node.inputs[0]], pop)
    return in_flight(first, build.window(pop)[0] + int(node.attrs["t_out"]), build.period)


def timing_process(build: Build, pop: Node, edge: Edge, key: str) -> tuple[Any | None, int]:
    """(process, delay) between the edge's synapse and ``pop``'s input: its align process, a
    DelayLine of ``delay`` steps, or None where the streamed current arrives on time."""
    graph, shape = build.graph, lava_shape(pop.shape)
    if edge.align is not None:
        node = graph[edge.align]
        builder = ALIGN_METHODS.of(node.attrs["method"], node)
        in_start = first_arrival(build, graph[node.inputs[0]], pop)
        return builder(build, node, in_start, build.window(pop)[0], shape), 0
    delay = stream_delay(build, pop, graph[edge.producer])
    if not delay:
        return None, 0
    return DelayLine(shape=shape, delay=delay, name=f"{pop.name}<-{key}:delay"), delay


def synaptic_delays(build: Build, pop: Node) -> Node | None:
    """The delay node (a ``temporal`` kind) of ``pop``'s tree, if any: it must feed ``pop``
    directly on its only edge, so delaying the edge's whole current is the same."""
    graph = build.graph
    delays = [n for n in tree_nodes(graph, pop) if kind_of(n).temporal]
    if not delays:
        return None
    if len(delays) > 1 or len(incoming_edges(graph, pop)) != 1 \
            or pop.inputs != [delays[0].name]:
        raise InputError(f"{pop.label()}: synaptic delays are lowered to Lava only as the last "
                         "op of a population's only input")
    return delays[0]


@dataclass(frozen=True)
class DelayedInput:
    """A population's input side when its input has synaptic delays: edges connect to the
    WindowDelay's ``a_in``, which feeds the neuron process."""

    delays: WindowDelay
    neuron: Any

    @property
    def a_in(self):
        return self.delays.a_in


def delayed_input(build: Build, pop: Node, neuron):
    """What ``pop``'s edges connect to: ``neuron``, or a WindowDelay in front of it (after the
    edge's synapse and align process) where its input has synaptic delays."""
    node = synaptic_delays(build, pop)
    if node is None:
        return neuron
    delays = WindowDelay(shape=lava_shape(pop.shape),
                         delays=one_to_lava(np.asarray(node.params["delay"], np.int64),
                                            pop.shape),
                         window=build.window(pop), period=build.period,
                         name=f"{node.name}:delay")
    delays.a_out.connect(neuron.a_in)
    return DelayedInput(delays, neuron)
