"""What a simulation decides once per graph, before any batch runs.

* which populations must keep their per-step spikes (a consumer streams them or resamples them
  with TTM); the others hand on only their spike counts (avg-repeat needs nothing else);
* the number type of each projection tree: float32 in fixed point wherever a bound proves
  every integer the tree and the membrane can hold stays below 2^24 (float32 is then exact and
  twice as fast), float64 elsewhere;
* each population's per-neuron fan-out, so that SynOps are a dot product of the spike counts
  with it (exact: the projection is linear in the counts) instead of a second pass through
  every projection;
* the bytes one sample needs while its batch runs, which sizes batches against a memory budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.snn import is_alignment, is_population, is_source, populations, tree_nodes
from mtdeploy.kinds import kind_of

DEFAULT_MEMORY_BUDGET = 1 << 30      # bytes of tensors one batch may hold at once
#: what the per-sample estimate leaves out: the ops' inner temporaries and the allocator's
#: freed blocks not yet reused (measured RSS over estimate: about 1.3 on the digits network)
ALLOCATOR_SLACK = 1.5
EXACT_FLOAT32 = 2 ** 23              # |integers| below this add exactly in float32 (24-bit)


@dataclass
class Plan:
    """Per-graph decisions of one simulation (see the module docstring)."""

    graph: Graph
    mode: str
    device: torch.device
    keep_steps: dict[str, bool]
    dtypes: dict[str, torch.dtype]   # node -> the number type of its population's tree
    fanout: dict[str, list[tuple[str, torch.Tensor]]]
    last_use: dict[str, int]
    bytes_per_sample: int = 0
    round_currents: bool = False     # fixed point off the CPU: round the projections' sums
    consumers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fixed(self) -> bool:
        return self.mode != "float"

    def batch_size(self, memory_budget: int, n: int) -> int:
        """Samples per batch so that one batch's tensors fit ``memory_budget`` bytes."""
        per_sample = max(self.bytes_per_sample, 1) * ALLOCATOR_SLACK
        return int(max(1, min(n, memory_budget // per_sample)))


PRECISIONS = ("float64", "float32")


def make_plan(graph: Graph, mode: str, device: torch.device, record: bool,
              precision: str = "float64") -> Plan:
    """The plan of one run. ``precision`` is float mode's number type: float64 (the ANN's
    values exactly, under avg-repeat) or float32 (faster, a float32 network's rounding)."""
    consumers: dict[str, list[str]] = {n.name: [] for n in graph}
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph):
        for i in node.inputs:
            consumers[i].append(node.name)
            last_use[i] = index
    keep = {p.name: any(_reads_steps(graph[c]) for c in consumers[p.name])
            for p in populations(graph)}
    exact32 = mode == "fixed" and device.type == "cpu"
    single = mode == "float" and precision == "float32"
    dtypes = {}
    for pop in populations(graph):
        fits = not is_source(pop) and (single or exact32 and _fits_float32(graph, pop))
        dtype = torch.float32 if fits else torch.float64
        dtypes.update({n.name: dtype for n in tree_nodes(graph, pop) + [pop]})
    fanout = {}
    if record and mode != "ann-int":
        fanout = {p.name: _fanout(graph, p) for p in populations(graph) if not is_source(p)}
    plan = Plan(graph, mode, device, keep, dtypes, fanout, last_use,
                round_currents=mode != "float" and device.type != "cpu", consumers=consumers)
    plan.bytes_per_sample = _bytes_per_sample(plan, record)
    return plan


def _reads_steps(consumer: Node) -> bool:
    """Whether ``consumer`` needs its producer's per-step output (all but avg-repeat)."""
    kind = kind_of(consumer)
    return not (kind.role == "timing" and not kind.reads_steps(consumer))


# ---- float32 exactness ----------------------------------------------------------------------
def _with_weight(node: Node, weight: np.ndarray) -> Node:
    return Node(node.name, node.kind, node.inputs, node.attrs, {"weight_int": weight})


def _fits_float32(graph: Graph, pop: Node) -> bool:
    """Whether every partial sum of ``pop``'s integer current, and its membrane over the
    window, stays below 2^23 in magnitude: bounds pushed through the tree with |weights|."""
    def one_step(name: str) -> float:     # the largest value one step of a producer carries
        src = graph[name]
        return float(2 ** (graph.meta.get("input_bits", 8) - 1)) if is_source(src) else 1.0

    bounds: dict[str, torch.Tensor] = {}
    for node in tree_nodes(graph, pop) + [pop]:
        if is_alignment(node):   # at most t_in steps of the producer summed
            src = node.inputs[0]
            bounds[node.name] = torch.full((1, *graph[src].shape),
                                           one_step(src) * int(node.attrs["t_in"]),
                                           dtype=torch.float64)
            continue
        gains = node.attrs.get("input_gain_int")
        xs = [(bounds[i] if i in bounds else
               torch.full((1, *graph[i].shape), one_step(i), dtype=torch.float64))
              * (abs(float(gains[k])) if gains else 1.0) for k, i in enumerate(node.inputs)]
        kind = kind_of(node)
        if node is pop:
            bias = np.abs(np.asarray(pop.params.get("bias_int", 0.0), np.float64))
            peak = float((xs[0] + torch.as_tensor(bias)).max())
            extra = abs(float(pop.attrs.get("v_init_int", 0))) + \
                float(pop.attrs.get("threshold_int", 0))
            return peak * int(pop.T) + extra < EXACT_FLOAT32
        if kind.weighted:
            weight = np.abs(np.asarray(node.params["weight_int"], np.float64))
            bounds[node.name] = kind.forward_int(_with_weight(node, weight), *xs)
        else:
            bounds[node.name] = kind.forward_int(node, *xs)
    return False


# ---- SynOps -----------------------------------------------------------------------------------
def _fanout(graph: Graph, pop: Node) -> list[tuple[str, torch.Tensor]]:
    """(producer, events per spike of each producer neuron) into ``pop``'s tree.

    Every weighted node of the tree counts one event per nonzero synapse a spike reaches; the
    tree is linear in its inputs, so the events are the gradient of the summed indicator
    outputs at the inputs. A tree reading the analog input holds MACs, not events: none.
    """
    leaves: dict[str, torch.Tensor] = {}
    values: dict[str, torch.Tensor] = {}
    events = torch.zeros((), dtype=torch.float64)
    for node in tree_nodes(graph, pop):
        if is_alignment(node) and is_source(graph[node.inputs[0]]):
            return []
        producers = node.inputs[:1] if is_alignment(node) else \
            [i for i in node.inputs if is_population(graph[i])]
        for name in producers:
            if name not in leaves:
                leaves[name] = torch.ones((1, *graph[name].shape), dtype=torch.float64,
                                          requires_grad=True)
        if is_alignment(node):
            values[node.name] = leaves[node.inputs[0]]
            continue
        xs = [values[i] if i in values else leaves[i] for i in node.inputs]
        kind = kind_of(node)
        if kind.weighted:
            ones = (np.asarray(node.params["weight"]) != 0).astype(np.float64)
            values[node.name] = kind.forward_int(_with_weight(node, ones), *xs)
            events = events + values[node.name].sum()
        else:
            values[node.name] = kind.forward_int(node, *xs)
    if not leaves or not events.requires_grad:
        return []
    grads = torch.autograd.grad(events, list(leaves.values()), allow_unused=True)
    return [(name, g[0].detach()) for name, g in zip(leaves, grads) if g is not None]


# ---- memory -----------------------------------------------------------------------------------
def _bytes_per_sample(plan: Plan, record: bool) -> int:
    """Peak bytes one sample holds: the live tensors (steps x size, a steady tensor counting one
    step; a population's counts and step sums), and while a node is computed one temporary the
    size of its output (a bias added, a mean taken) and, for a weighted node, its unrolled input
    (im2col)."""
    graph = plan.graph
    steps: dict[str, int] = {}
    live: dict[str, int] = {}
    peak = 0
    for index, node in enumerate(graph):
        kind = kind_of(node)
        if is_source(node):
            steps[node.name] = 1
        elif is_alignment(node):
            steps[node.name] = int(node.attrs["t_out"]) if kind.reads_steps(node) else 1
        elif is_population(node):
            steps[node.name] = int(node.T) if plan.keep_steps.get(node.name) else 0
        else:
            steps[node.name] = max(steps[i] for i in node.inputs)
        held = steps[node.name] + (2 if is_population(node) else 0)
        live[node.name] = held * node.size * 8
        scratch = max(steps[node.name], 1) * node.size * 8
        if kind.weighted and node.shape:
            weight = np.asarray(node.params["weight"])
            fan_in = weight.size // max(weight.shape[0], 1)
            scratch += max(steps[node.name], 1) * fan_in * (node.size // node.shape[0]) * 8
        peak = max(peak, sum(live.values()) + scratch)
        for name in node.inputs:
            if plan.last_use.get(name) == index and not (record and is_population(graph[name])):
                live.pop(name, None)
    return int(peak)
