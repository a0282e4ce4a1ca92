"""Edges whose projection begins with a non-linear stage on spike counts (max pooling).

Such a projection is not a matrix, so the edge is lowered in the other order from a linear
one: producer spikes -> avg-repeat align process (each producer neuron's count, output one hop
before the consumer's window) -> the stage's process (same step) -> the rest of the tree as
synapses on graded counts (one hop) -> neuron. The consumer sees the same integer current, in
the same window, as through the usual synapse -> align order; the schedule is unchanged.

Supported where the stage reads the align node directly (it pools the producer's counts), the
align is avg-repeat, the gain on the stage's input is not negative (the stage applies it after
the max), the edge's fan-in is not split, and the run is fixed point;
anything else is an InputError naming the layer (the reference simulator runs every case).
"""
from __future__ import annotations

from typing import Any, Callable

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import Edge
from mtdeploy.targets.loihi2.forms import gain_on
from mtdeploy.targets.loihi2.lava.layout import lava_shape
from mtdeploy.targets.loihi2.lava.procs.process import MaxPool, in_flight
from mtdeploy.targets.loihi2.lava.projection import edge_chain
from mtdeploy.targets.loihi2.lava.tables import Build, BuilderTable

#: (build, stage node) -> a process with ``a_in`` (the producer's counts) and ``a_out``
StageBuilder = Callable[[Build, Node], Any]

#: non-linear kinds (``linear_map = False``) -> their Lava process on counts
COUNT_STAGES: BuilderTable[StageBuilder] = BuilderTable("counts stage kind")


@COUNT_STAGES.register("maxpool")
def _maxpool(build: Build, node: Node) -> MaxPool:
    """The max of the counts, times the gain on the pool's input (a max commutes with a
    non-negative gain, so the stage applies it after the max)."""
    a = node.attrs
    return MaxPool(in_shape=lava_shape(build.graph[node.inputs[0]].shape),
                   out_shape=lava_shape(node.shape), kernel=a["kernel"], stride=a["stride"],
                   padding=a["padding"], gain=gain_on(node, node.inputs[0]),
                   name=f"{node.name}:maxpool")


def count_stage(build: Build, pop: Node, edge: Edge) -> Node | None:
    """The non-linear node ``edge``'s projection starts with, None for a linear projection;
    an InputError where the non-linear node cannot be lowered this way."""
    graph = build.graph
    chain = edge_chain(graph, pop, edge.entry)
    nonlinear = [n for n in chain if not kind_of(n).linear_map]
    if not nonlinear:
        return None
    head = nonlinear[0]
    align = graph[edge.align] if edge.align else None
    problems = [why for bad, why in (
        (len(nonlinear) > 1 or chain[0] is not head, "it must read the alignment directly"),
        (align is None or align.attrs["method"] != "avg-repeat", "it needs avg-repeat counts"),
        (gain_on(head, edge.align or "") < 0, "its input carries a negative gain"),
        (edge.producer in pop.attrs.get("fan_in_split", {}), "its edge's fan-in is split"),
        (not build.fixed_point, "only the fixed-point models have it")) if bad]
    if problems:
        raise InputError(f"{head.label()}: {head.kind} into {pop.label()} has no Lava lowering "
                         f"here ({'; '.join(problems)}); the reference simulator runs it")
    return head


def count_windows(build: Build, pop: Node, edge: Edge) -> tuple[int, int, int]:
    """(first input step, first output step, samples in flight) of the edge's align process:
    the producer's spikes arrive directly (no synapse yet), and its counts leave one hop
    before ``pop``'s window so that the synapses behind the stage deliver them on time."""
    producer = build.graph[edge.producer]
    in_start = build.window(producer)[1] - int(producer.T)
    out_start = build.window(pop)[0] - build.hop
    t_out = int(build.graph[edge.align].attrs["t_out"])
    return in_start, out_start, in_flight(in_start, out_start + t_out, build.period)


def counts_max(build: Build, edge: Edge, head: Node) -> int:
    """The largest value the stage sends: a full count times its gain (a graded spike)."""
    top = int(build.graph[edge.producer].T) * max(1, gain_on(head, edge.align or ""))
    if top >= 2 ** 23:
        raise InputError(f"{head.label()}: its counts times its gain reach {top:,}, beyond a "
                         "24-bit graded spike")
    return top


def tail_entry(graph: Graph, stage: Node, single: bool) -> str | None:
    """The first tree node behind the stage (what the synapses' own-process choice reads),
    when the edge is the only one into its tree input."""
    consumers = graph.consumers(stage.name)
    return consumers[0].name if single and len(consumers) == 1 else None
