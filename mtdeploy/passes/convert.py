"""ANN -> MT-SNN conversion passes: readout, per-layer T, unshared projection trees, alignment.

See docs/semantics.md §1 for the graph these passes produce.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import (incoming_edges, is_population, is_readout, is_source, populations,
                             spiking_populations, tree_nodes)
from mtdeploy.kinds.align import METHODS as ALIGN_METHODS
from mtdeploy.kinds.neurons import NEURONS
from mtdeploy.passes.fold_bn import fold_batchnorm
from mtdeploy.validate import SEED_MAX, finite_params, integer, real

INPUT_MAX_RANGE = (1e-12, 1e12)   # |x| whose 8-bit scale 2^input_exp stays a normal float


@dataclass
class ConvertOptions:
    timesteps: Any = None          # None: T = levels; int: all layers; {layer: T}: per layer
    alignment: str = "avg-repeat"
    neuron: str = "if"
    v_init: float = 0.5            # initial membrane potential as a fraction of the threshold
    seed: int = 0                  # TPP's Bernoulli stream
    input_max: float | None = None  # |x| that maps to the top of the input's integer range

    def checked(self) -> "ConvertOptions":
        """These options with every number validated (InputError naming the option), so a NaN
        or an out-of-range value stops here rather than as a math error in quantize."""
        input_max = None if self.input_max is None else real("input_max", self.input_max,
                                                             *INPUT_MAX_RANGE)
        return ConvertOptions(self.timesteps, self.alignment, self.neuron,
                              real("v_init", self.v_init, 0.0, 1.0),
                              integer("seed", self.seed, 0, SEED_MAX), input_max)


def _check_timesteps(spec, known: list[str]) -> None:
    """``timesteps``: None, a positive int for every layer, or {activation layer: positive int}."""
    def valid(t):
        return isinstance(t, int) and not isinstance(t, bool) and t >= 1
    if spec is None or valid(spec):
        return
    if not isinstance(spec, dict):
        raise InputError(f"timesteps must be a positive integer or {{layer: T}}, got {spec!r}")
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise InputError(f"timesteps name unknown activation layers {unknown}; known: {known}")
    bad = {k: v for k, v in spec.items() if not valid(v)}
    if bad:
        raise InputError(f"timesteps must be positive integers, got {bad}")


def add_readout(graph: Graph) -> Graph:
    """Make the graph's output an explicit readout population (idempotent)."""
    out = graph[graph.output]
    if is_readout(out):
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


def timesteps_of(node: Node, timesteps=None) -> int:
    """T of a spiking layer: ``timesteps`` (an int for all, or {layer: T}), else T = levels
    (the QCFS mapping: L quantization levels are exactly T steps of IF neurons)."""
    if isinstance(timesteps, int):
        return timesteps
    if node.name in (timesteps or {}):
        return int(timesteps[node.name])
    return integer(f"{node.label()}: levels", node.attrs.get("levels"), 1)


def assign_timesteps(graph: Graph, timesteps=None, neuron: str = "if", v_init: float = 0.5) -> Graph:
    """T of every population: the spiking layers' from ``timesteps`` (default: their levels),
    the input 1, the readout the longest of its producers; tree nodes take their population's."""
    if neuron not in NEURONS:
        raise InputError(f"neuron must be one of {', '.join(NEURONS)}, got {neuron!r}")
    spiking = spiking_populations(graph)
    _check_timesteps(timesteps, [n.name for n in spiking])
    for node in spiking:
        node.T = timesteps_of(node, timesteps)
        node.attrs["neuron"] = neuron
        node.attrs["v_init"] = float(v_init)
    graph.input.T = 1
    readout = graph[graph.output]
    producers = {e.producer for e in incoming_edges(graph, readout)}
    readout.T = max(graph[p].T for p in producers)
    for pop in populations(graph):
        for node in [] if is_source(pop) else tree_nodes(graph, pop):
            node.T = pop.T
    return graph


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
        raise InputError(f"alignment must be one of {', '.join(ALIGN_METHODS)}, got {method!r}")
    counts_only = [n.label() for n in graph if not kind_of(n).linear_map]
    if counts_only and method != "avg-repeat":
        raise InputError(f"{', '.join(counts_only)}: max pooling is exact only on whole-window "
                         f"spike counts, which alignment avg-repeat provides; with {method!r} "
                         "the consumer sees spikes step by step and a max over them is not the "
                         "ANN's max (use --alignment avg-repeat)")
    mismatches = []
    for pop in populations(graph):
        for edge in incoming_edges(graph, pop):
            if edge.align is not None:
                continue
            producer = graph[edge.producer]
            t_in, t_out = producer.T, pop.T
            if is_source(producer):
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
        raise InputError("alignment 'none' needs equal T on every edge; T changes on:\n  "
                         + "\n  ".join(mismatches)
                         + "\n(use alignment avg-repeat or ttm, or equal timesteps)")
    return graph


def check_timestep_range(graph: Graph, profile) -> None:
    """Refuse a T that the target's integer state cannot count (InputError naming the layers).

    Bounds from the profile's bits (docs/semantics.md §3): an avg-repeat alignment accumulator
    holds a producer's spike count, up to its T, so every T <= 2^(accumulator_bits-1) - 1.
    The readout never resets: it sums T_readout steps of its input, which on an avg-repeat
    edge is the producer's count, up to T_producer, every step; so one input of weight 1 firing
    throughout already reaches T_readout * T_producer, and that must fit 2^(state_bits-1) - 1
    (T <= 2896 for the layers feeding the readout with 24-bit state).
    """
    count_max = 2 ** (profile.accumulator_bits - 1) - 1
    state_max = 2 ** (profile.state_bits - 1) - 1
    problems = [f"{node.label()}: T={node.T} > {count_max:,} (its spike count must fit the "
                f"{profile.accumulator_bits}-bit accumulator)"
                for node in spiking_populations(graph) if node.T > count_max]
    readout = graph[graph.output]
    for edge in incoming_edges(graph, readout):
        producer = graph[edge.producer]
        counts = edge.align is not None and graph[edge.align].attrs.get("method") == "avg-repeat"
        reach = readout.T * (producer.T if counts else 1)
        if not is_source(producer) and reach > state_max:
            problems.append(f"{producer.label()}: T={producer.T} feeds the readout (T="
                            f"{readout.T}), whose sum reaches {reach:,} > {state_max:,} "
                            f"({profile.state_bits}-bit state)")
    if problems:
        raise InputError(f"timesteps too large for {profile.name}:\n  " + "\n  ".join(problems)
                         + f"\n(with this profile, layers feeding the readout may have T <= "
                         f"{math.isqrt(state_max):,}, the others T <= {count_max:,})")


def check_projection_trees(graph: Graph) -> None:
    """Each path producer -> population may hold at most one weighted op (conv/linear)."""
    problems = []
    for pop in populations(graph):
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
    options = (options or ConvertOptions()).checked()
    g = graph.copy()
    for node in g:
        finite_params(node.label(), node.params)
    if not spiking_populations(g):
        raise InputError("the model has no QCFS activation: mark each activation layer with "
                         "mtdeploy.nn.QCFS(levels, threshold)")
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
