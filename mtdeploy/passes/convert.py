"""ANN -> MT-SNN conversion passes: readout, per-layer T, unshared projection trees, alignment.

See docs/semantics.md §1 for the graph these passes produce.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kinds import kind_of
from mtdeploy.ir.snn import incoming_edges, is_population, populations

ALIGN_METHODS = ("avg-repeat", "ttm", "none")
NEURONS = ("if", "tpp")


@dataclass
class ConvertOptions:
    timesteps: Any = None          # None: T = levels; int: all layers; dict/path: per layer
    alignment: str = "avg-repeat"
    neuron: str = "if"
    v_init: float = 0.5            # initial membrane potential as a fraction of the threshold
    seed: int = 0                  # TPP's Bernoulli stream
    input_max: float | None = None  # |x| that maps to the top of the input's integer range
    extra: dict = field(default_factory=dict)


def parse_timesteps(spec) -> Any:
    """``--timesteps``: an integer for all layers, a JSON object, or a path to a JSON file."""
    if spec is None or isinstance(spec, (int, dict)):
        return spec
    text = str(spec).strip()
    if text.isdigit():
        return int(text)
    if Path(text).is_file():
        text = Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"--timesteps: expected an integer, a JSON object or a JSON file, got "
                         f"{spec!r}") from None
    if not isinstance(value, (int, dict)):
        raise InputError("--timesteps JSON must be an integer or an object {layer: T}")
    return value


def add_readout(graph: Graph) -> Graph:
    """Make the graph's output an explicit readout population (idempotent)."""
    out = graph[graph.output]
    if out.kind == "readout":
        return graph
    if kind_of(out).role == "activation":
        raise InputError(f"the model ends in an activation ({out.label()}); mtdeploy reads out the "
                         "current of a final linear layer (the logits): end the model with a "
                         "Linear/Conv without QCFS")
    node = Node(graph.unique_name("readout"), "readout", [out.name], shape=out.shape,
                origin="output")
    graph.insert_after(out.name, node)
    graph.output = node.name
    return graph


def assign_timesteps(graph: Graph, timesteps=None, neuron: str = "if", v_init: float = 0.5) -> Graph:
    spec = parse_timesteps(timesteps)
    if neuron not in NEURONS:
        raise InputError(f"--neuron must be one of {', '.join(NEURONS)}, got {neuron!r}")
    qcfs = graph.of_kind("qcfs")
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {n.name for n in qcfs})
        if unknown:
            raise InputError(f"--timesteps names unknown activation layers {unknown}; "
                             f"known: {[n.name for n in qcfs]}")
    for node in qcfs:
        t = spec if isinstance(spec, int) else (spec or {}).get(node.name, node.attrs["levels"])
        if int(t) < 1:
            raise InputError(f"{node.label()}: T must be >= 1, got {t}")
        node.T = int(t)
        node.attrs["neuron"] = neuron
        node.attrs["v_init"] = float(v_init)
    graph.input.T = 1
    readout = graph[graph.output]
    producers = {e.producer for e in incoming_edges(graph, readout)}
    readout.T = max(graph[p].T for p in producers)
    for pop in populations(graph):
        for node in _tree(graph, pop):
            node.T = pop.T
    return graph


def _tree(graph: Graph, pop: Node) -> list[Node]:
    from mtdeploy.ir.snn import tree_nodes

    return tree_nodes(graph, pop) if pop.kind != "input" else []


def unshare_projections(graph: Graph) -> Graph:
    """Duplicate linear nodes that feed several consumers, so each feeds exactly one population.

    Then every population owns its projection tree, and an alignment node can sit on each edge.
    """
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if is_population(node):
                continue
            consumers = graph.consumers(node.name)
            for k, consumer in enumerate(consumers[1:], start=2):
                clone = Node(graph.unique_name(f"{node.name}__{k}"), node.kind, list(node.inputs),
                             json.loads(json.dumps(node.attrs)),
                             {p: v.copy() for p, v in node.params.items()}, node.shape,
                             node.origin, node.T)
                graph.insert_after(node.name, clone)
                consumer.inputs = [clone.name if i == node.name else i for i in consumer.inputs]
                changed = True
    return graph


def insert_alignment(graph: Graph, method: str = "avg-repeat") -> Graph:
    """Put an align node on each producer -> projection edge that the method needs.

    avg-repeat: every edge (exact); ttm: where T changes; none: nowhere (error if T changes).
    Edges from the input always repeat the sample over the first layer's window.
    """
    if method not in ALIGN_METHODS:
        raise InputError(f"--alignment must be one of {', '.join(ALIGN_METHODS)}, got {method!r}")
    mismatches = []
    for pop in populations(graph):
        if pop.kind == "input":
            continue
        for edge in incoming_edges(graph, pop):
            if edge.align is not None:
                continue
            producer = graph[edge.producer]
            t_in, t_out = producer.T, pop.T
            if producer.kind == "input":
                edge_method = "avg-repeat"
            elif method == "avg-repeat" or (method == "ttm" and t_in != t_out):
                edge_method = method
            elif t_in != t_out:
                mismatches.append(f"{producer.label()} (T={t_in}) -> {pop.label()} (T={t_out})")
                continue
            else:
                continue
            node = Node(graph.unique_name(f"align.{producer.name}->{pop.name}"), "align",
                        [producer.name], {"method": edge_method, "t_in": t_in, "t_out": t_out},
                        shape=producer.shape, origin=f"alignment {producer.name} -> {pop.name}",
                        T=t_out)
            graph.insert_between(producer.name, edge.entry, node)
    if mismatches:
        raise InputError("--alignment none needs equal T on every edge; T changes on:\n  "
                         + "\n  ".join(mismatches)
                         + "\n(use --alignment avg-repeat or ttm, or equal --timesteps)")
    return graph


def check_projection_trees(graph: Graph) -> None:
    """Each path producer -> population may hold at most one weighted op (conv/linear)."""
    problems = []
    for pop in populations(graph):
        if pop.kind == "input":
            continue

        def walk(name: str, weighted_seen: str | None):
            node = graph[name]
            if is_population(node):
                return
            if kind_of(node).weighted:
                if weighted_seen:
                    problems.append(f"{node.label()} feeds {weighted_seen} with no activation "
                                    "between them")
                    return
                weighted_seen = node.name
            for i in node.inputs:
                walk(i, weighted_seen)

        for i in pop.inputs:
            walk(i, None)
    if problems:
        raise InputError("two weighted layers in a row cannot be mapped to one synapse layer "
                         "(put a QCFS activation between them):\n  " + "\n  ".join(problems))


def convert(graph: Graph, options: ConvertOptions | None = None) -> Graph:
    """Imported (BN-folded) IR -> converted MT-SNN IR. Returns a new graph."""
    options = options or ConvertOptions()
    g = graph.copy()
    if not g.of_kind("qcfs"):
        raise InputError("the model has no QCFS activation: mark each activation layer with "
                         "mtdeploy.nn.QCFS(levels, threshold)")
    if g.of_kind("batchnorm"):
        from mtdeploy.passes.fold_bn import fold_batchnorm

        g = fold_batchnorm(g)
    add_readout(g)
    check_projection_trees(g)
    unshare_projections(g)
    assign_timesteps(g, options.timesteps, options.neuron, options.v_init)
    insert_alignment(g, options.alignment)
    g.meta.update({"converted": True, "alignment": options.alignment, "neuron": options.neuron,
                   "v_init": options.v_init, "seed": int(options.seed)})
    if options.input_max is not None:
        g.meta["input_max"] = float(options.input_max)
    g.meta.setdefault("input_max", 1.0)
    return g
