"""Views of a converted graph as an SNN: populations and the projection trees feeding them."""
from __future__ import annotations

from dataclasses import dataclass

from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of


def is_population(node: Node) -> bool:
    return kind_of(node).role in ("activation", "readout", "source")


def is_source(node: Node) -> bool:
    return kind_of(node).role == "source"


def is_readout(node: Node) -> bool:
    return kind_of(node).role == "readout"


def is_alignment(node: Node) -> bool:
    return kind_of(node).role == "timing"


def populations(graph: Graph) -> list[Node]:
    """Input, spiking layers and readout, in topological order."""
    return [n for n in graph if is_population(n)]


@dataclass
class Edge:
    """One producer population feeding a consumer population's projection tree."""

    producer: str          # population node name
    align: str | None      # align node on this edge (None: the producer streams directly)
    entry: str             # first node of the tree that reads the edge (align node or tree node)


def tree_nodes(graph: Graph, pop: Node) -> list[Node]:
    """Linear and align nodes between ``pop`` and its producers, in topological order."""
    found: set[str] = set()
    stack = list(pop.inputs)
    while stack:
        name = stack.pop()
        node = graph[name]
        if is_population(node) or name in found:
            continue
        found.add(name)
        stack.extend(node.inputs)
    return [n for n in graph if n.name in found]


def spiking_populations(graph: Graph) -> list[Node]:
    """Populations that spike: neither the input nor the readout."""
    return [n for n in graph if kind_of(n).role == "activation"]


def incoming_edges(graph: Graph, pop: Node) -> list[Edge]:
    if is_source(pop):
        return []
    edges = []
    for node in tree_nodes(graph, pop) + [pop]:
        if is_alignment(node):
            edges.append(Edge(node.inputs[0], node.name, node.name))
            continue
        for src in node.inputs:
            if is_population(graph[src]):
                edges.append(Edge(src, None, node.name))
    return edges
