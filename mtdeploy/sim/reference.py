"""The reference simulator: batched torch, layer by layer, real membrane dynamics per step.

Float mode follows docs/semantics.md §2, fixed-point mode §3 (bit-exact with the Lava
``fixed_pt`` models). ``mode="ann-int"`` evaluates the equally quantized ANN (closed form per
population), the oracle that fixed-point avg-repeat simulation must equal.

Where the time goes: an avg-repeat current is one tensor over the window (a stride-0 view), so
each projection runs once per layer per batch; streamed currents run all T x N rows in one
call; the neurons step their T steps in cache-sized chunks (:mod:`mtdeploy.kinds.neurons`), and
a population whose consumers all average hands on only its spike counts. SynOps are the counts
times precomputed fan-outs (:mod:`.plan`). Batches are sized against a memory budget, and
outputs can go straight into a caller's array (a memory-mapped file), so memory does not grow
with the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.snn import tree_nodes
from mtdeploy.kinds import kind_of
from mtdeploy.sim.plan import DEFAULT_MEMORY_BUDGET, PRECISIONS, Plan, make_plan

MODES = ("float", "fixed", "ann-int")

#: progress(samples done, samples in all): called after every batch
Progress = Callable[[int, int], None]


@dataclass
class SimResult:
    output: np.ndarray                                   # (N, classes), ANN units
    counts: dict[str, np.ndarray] = field(default_factory=dict)   # population -> (N, *shape)
    synops: dict[str, float] = field(default_factory=dict)        # population -> events, whole batch
    input_clipped: int = 0                               # inputs saturated by fixed-point range
    spikes: dict[str, float] = field(default_factory=dict)        # population -> spikes, all samples
    batch_size: int = 0

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


@dataclass
class BatchResult:
    """One batch: outputs (n, classes) float64, per-sample spike counts (only when kept), and
    the batch's SynOps and spikes per population."""

    start: int
    output: torch.Tensor
    counts: dict[str, torch.Tensor]
    synops: dict[str, float]
    spikes: dict[str, float]
    clipped: int


class _Batch:
    """One batch moving through the graph; each value is freed after its last reader."""

    def __init__(self, plan: Plan, seed: int, start: int, n: int, record: bool):
        self.plan, self.record = plan, record
        self.ctx = {"seed": seed, "sample_ids": np.arange(start, start + n)}
        self.values: dict[str, torch.Tensor] = {}
        self.totals: dict[str, torch.Tensor] = {}     # population -> its output summed over steps
        self.units: dict[str, float] = {}             # ... in units of this (1 unless listed)
        self.counts: dict[str, torch.Tensor] = {}
        self.synops: dict[str, float] = {}
        self.clipped = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        for index, node in enumerate(plan.graph):
            kind = kind_of(node)
            if kind.role == "source":
                x, self.clipped = quantize_input(plan.graph, x) if plan.fixed else (x, 0)
                self.values[node.name], self.totals[node.name] = x.unsqueeze(0), x
            elif kind.role == "timing":
                self.values[node.name] = self._align(node, kind)
            elif kind.role == "linear":
                xs = [self.values[i].to(plan.dtypes[node.name]) for i in node.inputs]
                xs = _apply_gains(node, xs, plan.fixed)
                y = kind.forward_steps(node, xs[0]) if kind.temporal else \
                    _linear(node, xs, plan.fixed)
                self.values[node.name] = torch.round(y) if plan.round_currents else y
            else:
                self._population(node, kind)
            for name in node.inputs:
                if plan.last_use.get(name) == index:
                    self.values.pop(name, None)
                    self.totals.pop(name, None)
                    self.units.pop(name, None)
        return self.values[plan.graph.output][0].to(torch.float64)

    def _align(self, node: Node, kind) -> torch.Tensor:
        src, dtype, fixed = node.inputs[0], self.plan.dtypes[node.name], self.plan.fixed
        if self.plan.mode == "ann-int":
            return kind.closed_form_input(node, self.values[src])
        if kind.reads_steps(node):
            return kind.resample(node, self.values[src].to(dtype), fixed)
        return kind.repeat_total(node, self.totals[src].to(dtype), fixed,
                                 self.units.get(src, 1.0))

    def _population(self, node: Node, kind) -> None:
        plan = self.plan
        current = _apply_gains(node, [self.values[node.inputs[0]]], plan.fixed)[0]
        if plan.fixed:
            bias = torch.as_tensor(node.params["bias_int"], dtype=current.dtype,
                                   device=current.device)
            current = per_step(lambda v: v + bias, [current])
        if plan.mode == "ann-int":
            if current.shape[0] != 1:
                raise InputError(f"{node.name}: the equally quantized ANN exists only with "
                                 "avg-repeat alignment on every edge")
            out = kind.closed_form(node, current[0]).unsqueeze(0)
            self.values[node.name], self.totals[node.name] = out, out[0]
            count = out[0]
        elif hasattr(kind, "run"):      # a spiking kind that can skip its per-step output
            spikes = kind.run(node, current, plan.fixed, self.ctx, plan.keep_steps[node.name])
            if spikes.steps is not None:
                self.values[node.name] = spikes.steps
            self.totals[node.name], self.units[node.name] = spikes.count, spikes.unit
            count = spikes.count
        else:
            out = kind.simulate(node, current, plan.fixed, self.ctx)
            self.values[node.name], self.totals[node.name] = out, out.sum(0)
            count = self.totals[node.name]
            if not plan.fixed and "threshold" in node.params:   # float outputs are th * spikes
                count = torch.round(count / float(node.params["threshold"]))
        if node.name != plan.graph.output and self.record:
            self.counts[node.name] = count
        if self.record and plan.mode != "ann-int":
            self.synops[node.name] = sum(
                float(torch.matmul(self.counts[p].reshape(count.shape[0], -1).to(torch.float64),
                                   f.reshape(-1).to(count.device)).sum())
                for p, f in plan.fanout.get(node.name, []))


def run_batches(plan: Plan, x, spans: Iterable[tuple[int, int]], seed: int,
                record: bool = True) -> Iterator[BatchResult]:
    """Simulate ``x[start:stop]`` for each span; ``x`` is anything sliceable into (n, *shape)
    arrays (a memory-mapped ``.npy`` included), read one batch at a time."""
    with torch.no_grad():
        for start, stop in spans:
            xb = x[start:stop]
            xb = xb.to(plan.device, torch.float64) if isinstance(xb, torch.Tensor) else \
                torch.from_numpy(np.array(xb, dtype=np.float64)).to(plan.device)
            batch = _Batch(plan, seed, start, stop - start, record)
            out = batch.run(xb)
            spikes = {k: float(v.sum()) for k, v in batch.counts.items()}
            yield BatchResult(start, out, batch.counts, batch.synops, spikes, batch.clipped)


def spans(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """Batch ``rank``'s share of [0, n): batches rank, rank + world, ... of ``batch_size``
    samples, so every process runs exactly the batches a single process would."""
    return [(s, min(s + batch_size, n)) for s in range(rank * batch_size, n, world * batch_size)]


@dataclass
class Setup:
    """A checked run: its inputs (sliceable, e.g. a memory map), plan, seed and batch size."""

    x: object
    plan: Plan
    seed: int
    n: int
    batch_size: int


def prepare(graph: Graph, x, mode: str, seed: int | None = None, record: bool = True,
            device: str | torch.device = "cpu", precision: str = "float64",
            memory_budget: int = DEFAULT_MEMORY_BUDGET, batch_size: int | None = None) -> Setup:
    """Check the mode, graph, inputs and device, and plan the run (the batch size from
    ``memory_budget`` unless given): the same for every process of a distributed run."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not graph.meta.get("converted"):
        raise InputError("simulate needs a converted graph (mtdeploy.passes.convert)")
    if mode != "float" and not graph.meta.get("quantized"):
        raise InputError("fixed-point simulation needs a quantized graph (mtdeploy.passes.quantize)")
    x = x if hasattr(x, "shape") else np.asarray(x)
    want = tuple(graph.input.shape)
    if len(x.shape) < 1 or tuple(x.shape[1:]) != want:
        raise InputError(f"input has shape {tuple(x.shape)}; the model takes (N, {', '.join(map(str, want))})")
    plan = make_plan(graph, mode, resolve_device(device), record, precision)
    n = int(x.shape[0])
    return Setup(x, plan, int(graph.meta.get("seed", 0) if seed is None else seed), n,
                 int(batch_size or plan.batch_size(memory_budget, n)))


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device called ``name``; an InputError (exit 2) when there is no such device
    here, before any work starts."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"device must be cpu or cuda[:index], got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(device)!r}: torch sees no CUDA device on this machine "
                             "(use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) here")
    elif device.type != "cpu":
        raise InputError(f"device must be cpu or cuda[:index], got {name!r}")
    return device


class Collector:
    """Gathers batch results into a SimResult: outputs into ``out`` (an array, e.g. a memory
    map), totals always, per-sample counts only with ``keep_counts``."""

    def __init__(self, graph: Graph, n: int, out=None, keep_counts: bool = True):
        self.graph, self.n, self.keep_counts = graph, n, keep_counts
        shape = (n, *graph[graph.output].shape)
        self.result = SimResult(np.empty(shape) if out is None else out)
        if self.result.output.shape != shape:
            raise InputError(f"output array has shape {self.result.output.shape}, expected {shape}")

    def add(self, b: BatchResult) -> None:
        res = self.result
        stop = b.start + b.output.shape[0]
        res.output[b.start:stop] = b.output.cpu().numpy()
        res.input_clipped += b.clipped
        for name, value in b.synops.items():
            res.synops[name] = res.synops.get(name, 0.0) + value
        for name, value in b.spikes.items():
            res.spikes[name] = res.spikes.get(name, 0.0) + value
        if self.keep_counts:
            for name, c in b.counts.items():
                if name not in res.counts:
                    res.counts[name] = np.zeros((self.n, *c.shape[1:]))
                res.counts[name][b.start:stop] = c.cpu().numpy()


def simulate(graph: Graph, x, mode: str = "float", seed: int | None = None,
             batch_size: int | None = None, record: bool = True, progress: Progress | None = None,
             *, device: str | torch.device = "cpu", memory_budget: int = DEFAULT_MEMORY_BUDGET,
             keep_counts: bool = True, out=None, precision: str = "float64") -> SimResult:
    """Run ``x`` (N, *input_shape) through a converted graph (quantized for fixed/ann-int).

    ``batch_size`` defaults to what fits ``memory_budget`` bytes (:meth:`Plan.batch_size`).
    ``x`` may be a memory-mapped array: it is read one batch at a time. ``out`` receives the
    outputs (e.g. a memory-mapped file) instead of a new array. ``keep_counts=False`` keeps only
    the spike totals per population (``SimResult.spikes``), not every sample's counts.
    ``device`` is where the tensors live ("cpu", "cuda"); fixed point stays exact there
    (every projection's sum is rounded off the CPU). ``precision="float32"`` runs float mode
    in float32 (faster; no longer the float64 ANN's values to the bit).
    """
    run = prepare(graph, x, mode, seed, record, device, precision, memory_budget, batch_size)
    collect = Collector(graph, run.n, out, keep_counts and record)
    collect.result.batch_size = run.batch_size
    for b in run_batches(run.plan, run.x, spans(run.n, run.batch_size), run.seed, record):
        collect.add(b)
        if progress is not None:
            progress(b.start + b.output.shape[0], run.n)
    return collect.result


def population_steps(graph: Graph, x, mode: str = "fixed", seed: int | None = None) -> dict:
    """Every population's per-step output ``{name: (T, N, *shape)}`` (spikes, or graded
    payloads), one batch with nothing freed: for comparing small runs step for step with
    another simulator (stock netx), not for large ones."""
    run = prepare(graph, x, mode, seed, True)
    plan = replace(run.plan, last_use={}, keep_steps={k: True for k in run.plan.keep_steps})
    batch = _Batch(plan, run.seed, 0, run.n, True)
    with torch.no_grad():
        batch.run(torch.as_tensor(np.asarray(run.x), dtype=torch.float64))
    return {node.name: batch.values[node.name].cpu().numpy() for node in graph
            if kind_of(node).role in ("activation", "readout") and node.name in batch.values}


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
