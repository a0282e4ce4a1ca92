"""The reference simulator: batched torch, layer by layer, real membrane dynamics per step.

Float mode follows docs/semantics.md §2, fixed-point mode §3 (bit-exact with the Lava
``fixed_pt`` models). ``mode="ann-int"`` evaluates the equally quantized ANN (closed form per
population), the oracle that fixed-point avg-repeat simulation must equal.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.kinds import kind_of
from mtdeploy.ir.snn import is_alignment, is_source, tree_nodes

MODES = ("float", "fixed", "ann-int")


@dataclass
class SimResult:
    output: np.ndarray                                   # (N, classes), ANN units
    counts: dict[str, np.ndarray] = field(default_factory=dict)   # population -> (N, *shape)
    synops: dict[str, float] = field(default_factory=dict)        # population -> events, whole batch
    input_clipped: int = 0                               # inputs saturated by fixed-point range

    @property
    def total_synops(self) -> float:
        return float(sum(self.synops.values()))


def quantize_input(graph: Graph, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Integer input per semantics §3, and how many values saturated."""
    limit = 2 ** (graph.meta["input_bits"] - 1) - 1
    scaled = torch.round(x * 2.0 ** graph.meta["input_exp"])
    clipped = int((scaled.abs() > limit).sum())
    return scaled.clamp(-limit, limit), clipped


def steady(x: torch.Tensor) -> bool:
    """Whether a time-major tensor repeats one step (a stride-0 view over time): what
    avg-repeat alignment delivers, a constant current over the consumer's window."""
    return x.shape[0] > 1 and x.stride(0) == 0


def per_step(f, xs: list[torch.Tensor]) -> torch.Tensor:
    """``f`` (batch-first, one step) over time-major inputs (T, N, ...): once on the shared step
    when every input is steady (the result stays a stride-0 view), else on all T x N rows."""
    steps = {x.shape[0] for x in xs}
    if len(steps) != 1:
        raise ValueError(f"inputs with different step counts {steps}")
    t = steps.pop()
    if t > 1 and all(steady(x) for x in xs):
        y = f(*[x[0] for x in xs])
        return y.unsqueeze(0).expand(t, *y.shape)
    n = xs[0].shape[1]
    y = f(*[x.reshape(t * n, *x.shape[2:]) for x in xs])
    return y.reshape(t, n, *y.shape[1:])


def _apply_gains(node: Node, xs: list[torch.Tensor], fixed: bool) -> list[torch.Tensor]:
    gains = node.attrs.get("input_gain_int")
    if not fixed or not gains:
        return xs
    return [per_step(lambda v, g=g: v * g, [x]) for x, g in zip(xs, gains)]


def _linear(node: Node, xs: list[torch.Tensor], fixed: bool) -> torch.Tensor:
    kind = kind_of(node)
    forward = kind.forward_int if fixed else kind.forward
    return per_step(lambda *v: forward(node, *v), xs)


def _indicator_events(graph: Graph, pop: Node, counts: dict[str, torch.Tensor]) -> float:
    """SynOps into ``pop``: each producer spike times its fan-out through the projection tree."""
    values: dict[str, torch.Tensor] = {}
    total = 0.0
    for node in tree_nodes(graph, pop):
        if is_alignment(node):
            src = graph[node.inputs[0]]
            if is_source(src):
                return 0.0  # analog input: MACs, not synaptic events
            values[node.name] = counts[src.name]
            continue
        xs = [values.get(i, counts.get(i)) for i in node.inputs]
        if any(x is None for x in xs):
            return 0.0
        if kind_of(node).weighted:
            # Same op with every nonzero weight set to 1: its output sums count events.
            indicator = Node(node.name, node.kind, node.inputs, node.attrs,
                             {"weight_int": (node.params["weight"] != 0).astype(np.float64)})
            y = kind_of(node).forward_int(indicator, *xs)
            total += float(y.sum())
            values[node.name] = y
        else:
            values[node.name] = kind_of(node).forward_int(node, *xs)
    return total


def _run_batch(graph: Graph, x: torch.Tensor, mode: str, seed: int, sample_ids: np.ndarray,
               record: bool) -> tuple[torch.Tensor, dict, dict, int]:
    fixed = mode != "float"
    values: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    synops: dict[str, float] = {}
    clipped = 0
    ctx = {"seed": seed, "sample_ids": sample_ids}
    for node in graph:
        kind = kind_of(node)
        if kind.role == "source":
            xin = x
            if fixed:
                xin, clipped = quantize_input(graph, x)
            values[node.name] = xin.unsqueeze(0)
            continue
        xs = [values[i] for i in node.inputs]
        if kind.role == "timing":
            values[node.name] = kind.closed_form_input(node, xs[0]) if mode == "ann-int" \
                else kind.resample(node, xs[0], fixed)
            continue
        xs = _apply_gains(node, xs, fixed)
        if kind.role == "linear":
            values[node.name] = _linear(node, xs, fixed)
            continue
        current = xs[0]
        if fixed:
            bias = torch.as_tensor(node.params["bias_int"], dtype=current.dtype)
            current = per_step(lambda v: v + bias, [current])
        if mode == "ann-int":
            if current.shape[0] != 1:
                raise InputError(f"{node.name}: the equally quantized ANN exists only with "
                                 "avg-repeat alignment on every edge")
            out = kind.closed_form(node, current[0]).unsqueeze(0)
        else:
            out = kind.simulate(node, current, fixed, ctx)
        values[node.name] = out
        if node.name != graph.output:
            total = out.sum(0)
            if not fixed and "threshold" in node.params:   # float outputs are th * spikes
                total = torch.round(total / float(node.params["threshold"]))
            counts[node.name] = total
            if record and mode != "ann-int":
                synops[node.name] = _indicator_events(graph, node, counts)
    if record and mode != "ann-int":
        synops[graph.output] = _indicator_events(graph, graph[graph.output], counts)
    return values[graph.output][0], counts, synops, clipped


def simulate(graph: Graph, x, mode: str = "float", seed: int | None = None,
             batch_size: int = 512, record: bool = True, progress: bool = False) -> SimResult:
    """Run ``x`` (N, *input_shape) through a converted graph (quantized for fixed/ann-int)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}")
    if not graph.meta.get("converted"):
        raise InputError("simulate needs a converted graph (mtdeploy.passes.convert)")
    if mode != "float" and not graph.meta.get("quantized"):
        raise InputError("fixed-point simulation needs a quantized graph (mtdeploy.passes.quantize)")
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    want = tuple(graph.input.shape)
    if tuple(x.shape[1:]) != want:
        raise InputError(f"input has shape {tuple(x.shape)}; the model takes (N, {', '.join(map(str, want))})")
    seed = graph.meta.get("seed", 0) if seed is None else seed
    outs, all_counts, all_synops, clipped = [], {}, {}, 0
    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"simulate ({mode})", unit="batch", leave=False)
    with torch.no_grad():
        for start in starts:
            xb = x[start:start + batch_size]
            ids = np.arange(start, start + xb.shape[0])
            out, counts, synops, c = _run_batch(graph, xb, mode, seed, ids, record)
            outs.append(out)
            clipped += c
            for k, v in counts.items():
                all_counts.setdefault(k, []).append(v)
            for k, v in synops.items():
                all_synops[k] = all_synops.get(k, 0.0) + v
    return SimResult(torch.cat(outs).numpy(), {k: torch.cat(v).numpy() for k, v in all_counts.items()},
                     all_synops, clipped)


def tree_int_forward(graph: Graph, pop_name: str, edge_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The integer projection tree of one population, without bias, for one time step.

    ``edge_inputs`` maps each edge (align node name, or producer name for a streamed edge) to
    an integer tensor (N, *shape); edges left out are zero. Gains are applied. Used by
    backends to materialise synapse matrices.

    Only the nodes downstream of the given edges are evaluated: integer forwards are linear
    without bias, so every other node is zero (a residual add's other branch is a zero view,
    its convolutions never run). The spatial sizes may differ from the graph's (a crop of a
    map, for probing a local tree's kernel) wherever the tree's kinds allow it.
    """
    pop = graph[pop_name]
    n = next(iter(edge_inputs.values())).shape[0] if edge_inputs else 1
    values = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in edge_inputs.items()}
    for node in tree_nodes(graph, pop):
        if node.name in values or not any(i in values for i in node.inputs):
            continue
        xs = _apply_gains(node, _with_zeros(graph, node, values), True)
        values[node.name] = kind_of(node).forward_int(node, *xs)
    root = pop.inputs[0]
    if root not in values:
        return torch.zeros((n, *graph[root].shape), dtype=torch.float64)
    return _apply_gains(pop, [values[i] for i in pop.inputs], True)[0]


def _with_zeros(graph: Graph, node: Node, values: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``node``'s inputs, the unreached ones as zero views (shaped like a reached input of the
    same graph shape, so crops work)."""
    ref = next(i for i in node.inputs if i in values)
    out = []
    for i in node.inputs:
        if i in values:
            out.append(values[i])
            continue
        like = values[ref]
        shape = like.shape if graph[i].shape == graph[ref].shape \
            else (like.shape[0], *graph[i].shape)
        out.append(like.new_zeros(()).expand(shape))
    return out
