"""Lowering a converted, quantized MT-SNN graph to a Lava process graph, and running it.

Per population (docs/semantics.md §1): one neuron process (``IFNeuron``, ``TPPNeuron`` or
``Readout``) and, per incoming edge, the edge's whole projection as Lava synapse processes
(``Conv`` where the projection is a plain convolution, otherwise ``Dense`` or ``Sparse`` with
the materialised integer matrix) followed by the edge's alignment process. Aligning *after* the
synapse is equivalent to the semantics' align-then-project (the projection is linear and time
invariant) and keeps every spike on the wire binary. Edges into one population meet in the
neuron's input port, which sums them (residual adds).

Timing is the graph's stored schedule (:func:`mtdeploy.passes.schedule`), whose ``hop_steps``
must equal ``SYNAPSE_HOP``, the measured latency of Lava's synapse processes: every Lava
synapse process sends the previous step's result (measured: a spike sent at step t reaches the
next process at t+1, for Dense, Sparse and Conv; see tests/test_lava_processes.py), while the
neuron and align processes here receive and send in the same step.

Lava's Dense/Sparse ``fixed_pt`` models clip weights to 8 bits and, for mixed-sign matrices, drop
the least significant bit. Integers are therefore sent as ``2*w`` with ``weight_exp = -1`` (an
exact right shift of an even sum); a matrix with entries beyond [-128, 127] (sums through pools)
is split into base-256 digit matrices, one synapse process each, with ``weight_exp = 8k - 1``.
Lava's ``Conv`` ignores ``weight_exp`` and wraps its output to 24 bits, so a conv is lowered to
``Conv`` only when its worst-case output fits.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.sparse.process import Sparse
from lava.utils.weightutils import SignMode

from mtdeploy.errors import InputError, MtdeployError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.kinds.align import edge_scale
from mtdeploy.passes.schedule import scheduled
from mtdeploy.ir.snn import incoming_edges, populations, tree_nodes
from mtdeploy.targets.loihi2.lava.procs.process import (AlignAvgRepeat, AlignTTM, DelayLine,
                                                         IFNeuron, Readout, SampleSource,
                                                         TPPNeuron)

SYNAPSE_HOP = 1             # steps a Dense/Sparse/Conv process delays its input (measured)
CONV_OUT_LIMIT = 2 ** 23    # Lava's fixed-point Conv wraps a_out to signed 24 bits
SPARSE_BELOW = 0.1          # density under which a matrix becomes a Sparse process
SPARSE_MIN_SIZE = 1024      # ... if it has at least this many entries
GRADED_BITS = 24            # num_message_bits of graded input without a quantized input width
DEFAULT_TIMEOUT_S = 600.0


# ---- layouts --------------------------------------------------------------------------------
def lava_shape(shape) -> tuple[int, ...]:
    """IR (C, H, W) -> Lava (W, H, C), what lava.proc.conv reads; anything else -> flat."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape[2], shape[1], shape[0]
    return (int(np.prod(shape)),)


def to_lava(a: np.ndarray, shape) -> np.ndarray:
    """Batch (N, *IR shape) -> (N, *Lava shape)."""
    a = np.asarray(a)
    if len(shape) == 3:
        return np.ascontiguousarray(a.transpose(0, 3, 2, 1))
    return a.reshape(a.shape[0], -1)


def from_lava(a: np.ndarray, shape) -> np.ndarray:
    """Batch (N, *Lava shape) -> (N, *IR shape)."""
    a = np.asarray(a)
    if len(shape) == 3:
        return np.ascontiguousarray(a.transpose(0, 3, 2, 1))
    return a.reshape(a.shape[0], *shape)


def lava_order(shape) -> np.ndarray:
    """For each flat Lava-layout position, the flat index of the same element in IR order."""
    n = int(np.prod(shape))
    return to_lava(np.arange(n).reshape(1, *shape), shape).ravel()


# ---- projections ----------------------------------------------------------------------------
def _edge_chain(graph: Graph, pop: Node, entry: str) -> list[Node]:
    """Tree nodes from ``entry`` (the edge's first tree node, or its align node, exclusive)
    down to ``pop`` (exclusive). Trees are unshared: each tree node has one consumer."""
    chain, node = [], graph[entry]
    if node.kind == "align":
        node = _only_consumer(graph, node)
    while node.name != pop.name:
        chain.append(node)
        node = _only_consumer(graph, node)
    return chain


def _only_consumer(graph: Graph, node: Node) -> Node:
    consumers = graph.consumers(node.name)
    if len(consumers) != 1:
        raise InputError(f"{node.label()} feeds {len(consumers)} nodes; lower a converted graph "
                         "(mtdeploy.passes.convert)")
    return consumers[0]


def _gain_on(node: Node, src: str) -> int:
    gains = node.attrs.get("input_gain_int")
    return int(gains[node.inputs.index(src)]) if gains else 1


def _plain_conv(graph: Graph, pop: Node, key: str, entry: str) -> Node | None:
    """The conv node if the edge's projection is exactly that conv (adds after it only sum)."""
    chain = _edge_chain(graph, pop, entry)
    if not chain or chain[0].kind != "conv" or any(n.kind != "add" for n in chain[1:]):
        return None
    prev = key
    for node in chain + [pop]:
        if _gain_on(node, prev) != 1:
            return None
        prev = node.name
    return chain[0]


def _unbiased(node: Node) -> Node:
    if "bias" not in node.params:
        return node
    params = dict(node.params, bias=np.zeros_like(node.params["bias"]))
    return Node(node.name, node.kind, node.inputs, node.attrs, params, node.shape, node.origin,
                node.T)


def tree_float_forward(graph: Graph, pop: Node, edge_inputs: dict[str, torch.Tensor],
                       with_bias: bool = False) -> torch.Tensor:
    """Float projection tree of ``pop`` for one step (float64), edges left out are zero."""
    values: dict[str, torch.Tensor] = {}
    for e in incoming_edges(graph, pop):
        key = e.align or e.producer
        values[key] = edge_inputs.get(key)
    n = next((v.shape[0] for v in values.values() if v is not None), 1)
    for key, v in values.items():
        if v is None:
            values[key] = torch.zeros((n, *graph[key].shape), dtype=torch.float64)
    for node in tree_nodes(graph, pop):
        if node.name in values:
            continue
        node_ = node if with_bias else _unbiased(node)
        values[node.name] = kind_of(node).forward(node_, *[values[i] for i in node.inputs])
    return values[pop.inputs[0]]


def _tree_int(graph: Graph, pop: Node, edge_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    from mtdeploy.sim.reference import tree_int_forward

    return tree_int_forward(graph, pop.name, edge_inputs)


def edge_matrix(graph: Graph, pop: Node, key: str, fixed_point: bool,
                chunk_entries: int = 2 ** 22) -> sp.csr_matrix:
    """The edge's projection as a matrix (out, in) in Lava's flat layouts.

    Materialised by pushing basis vectors through the tree (the integer tree of semantics §3 in
    fixed point, so the matrix is whatever the reference simulator computes), in chunks.
    """
    in_shape, out_shape = graph[key].shape, pop.shape
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    scale = 1.0 if fixed_point else edge_scale(graph, key, 1.0)
    step = max(1, min(n_in, chunk_entries // max(1, n_out)))
    rows, cols, vals = [], [], []
    for c0 in range(0, n_in, step):
        b = min(step, n_in - c0)
        basis = torch.zeros((b, n_in), dtype=torch.float64)
        basis[torch.arange(b), c0 + torch.arange(b)] = scale
        basis = basis.reshape(b, *in_shape)
        if fixed_point:
            y = _tree_int(graph, pop, {key: basis})
        else:
            y = tree_float_forward(graph, pop, {key: basis})
        y = y.reshape(b, n_out).numpy()
        i, o = np.nonzero(y)
        rows.append(o)
        cols.append(i + c0)
        vals.append(y[i, o])
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_out, n_in))
    if fixed_point:
        if not np.array_equal(m.data, np.round(m.data)):
            raise InputError(f"{pop.label()}: non-integer synapse weights; quantize the graph "
                             "(mtdeploy.passes.quantize) before lowering in fixed point")
        m = m.astype(np.int64)
    perm_out, perm_in = lava_order(out_shape), lava_order(in_shape)
    return m[perm_out][:, perm_in].tocsr()


def weight_digits(m: sp.csr_matrix) -> list[tuple[int, sp.csr_matrix]]:
    """Balanced base-256 digits: m = sum_k d_k * 256**k, every d_k in [-128, 127]."""
    digits, rest, k = [], m.copy().astype(np.int64), 0
    while rest.nnz:
        d = rest.copy()
        d.data = (d.data + 128) % 256 - 128
        d.eliminate_zeros()
        if d.nnz:
            digits.append((k, d))
        rest = rest - d
        rest.data //= 256
        rest.eliminate_zeros()
        k += 1
    return digits or [(0, m.astype(np.int64))]


# ---- the network ----------------------------------------------------------------------------
@dataclass
class _EdgeInfo:
    producer: str
    align: str | None
    method: str | None
    synapse: str
    processes: int
    nnz: int
    max_abs_weight: float
    digits: int = 1
    delay: int = 0


@dataclass
class _LayerInfo:
    name: str
    kind: str
    neuron: str | None
    T: int
    window: tuple[int, int]
    shape: tuple[int, ...]
    lava_shape: tuple[int, ...]
    processes: Counter = field(default_factory=Counter)
    edges: list[_EdgeInfo] = field(default_factory=list)


class LavaNetwork:
    """A built Lava process graph for one converted graph and a batch of samples.

    ``run()`` executes every sample back to back in one Lava run (one sample period each, state
    re-initialised at each window start) and always releases Lava's OS processes.
    """

    def __init__(self, graph: Graph, fixed_point: bool, n_samples: int, period: int, seed: int,
                 record_counts: bool):
        self.graph = graph
        self.fixed_point = fixed_point
        self.n_samples = n_samples
        self.period = period
        self.seed = seed
        self.record_counts = record_counts
        self.hop = int(graph.meta["schedule"]["hop_steps"])
        self.source: SampleSource | None = None
        self.readout: Readout | None = None
        self.neurons: dict[str, Any] = {}
        self.layers: dict[str, _LayerInfo] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.timings: dict[str, float] = {}     # wall-clock seconds of the last run's phases
        self._started = False
        self._done = False

    # ---- report ---------------------------------------------------------------------------
    def process_count(self) -> int:
        return 1 + sum(sum(l.processes.values()) for l in self.layers.values())

    def describe(self) -> dict:
        """What was built, per layer: window, processes by kind, and each edge's synapse."""
        layers = []
        totals: Counter = Counter({"SampleSource": 1})
        for info in self.layers.values():
            totals.update(info.processes)
            layers.append({
                "name": info.name, "kind": info.kind, "neuron": info.neuron, "T": info.T,
                "window": list(info.window), "shape": list(info.shape),
                "lava_shape": list(info.lava_shape), "processes": dict(info.processes),
                "edges": [{"from": e.producer, "align": e.align, "method": e.method,
                           "synapse": e.synapse, "processes": e.processes, "nnz": e.nnz,
                           "max_abs_weight": e.max_abs_weight, "weight_digits": e.digits,
                           "delay": e.delay}
                          for e in info.edges]})
        return {"backend": "lava", "lava_version": _lava_version(),
                "mode": "fixed_pt" if self.fixed_point else "floating_pt",
                "hop_steps": self.hop, "steps_per_sample": self.period,
                "samples": self.n_samples, "total_steps": self.period * self.n_samples,
                "process_count": sum(totals.values()), "processes_by_kind": dict(totals),
                "layers": layers}

    # ---- running ----------------------------------------------------------------------------
    def run(self, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> np.ndarray:
        """Run all samples; returns the readout (N, *out shape) in the ANN's units.

        The runtime is stopped afterwards whatever happens (errors, Ctrl-C). ``timeout_s`` counts
        from this call, compile and start-up included, and is enforced while the network runs:
        past it the OS processes are terminated and :class:`MtdeployError` is raised. A process
        that dies mid-run raises :class:`MtdeployError` with its exception at once.
        """
        if self._started:
            raise MtdeployError("this LavaNetwork has already run; build a new one "
                                "(lower_to_lava) for another batch")
        self._started = True
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        steps = self.period * self.n_samples
        finished = False
        try:
            t0 = time.perf_counter()
            cfg = Loihi2SimCfg(select_tag="fixed_pt" if self.fixed_point else "floating_pt")
            self.source.create_runtime(run_cfg=cfg)
            runtime = self.source.runtime
            t1 = time.perf_counter()
            self.source.run(condition=RunSteps(num_steps=steps, blocking=False))
            ports = list(runtime.service_to_runtime)
            polls = 0
            while not all(p.probe() for p in ports):
                if deadline is not None and time.monotonic() > deadline:
                    raise MtdeployError(
                        f"the Lava run did not finish within {timeout_s:g} s ({steps} steps, "
                        f"{self.process_count()} processes); its processes were terminated")
                polls += 1
                if polls % 50 == 0:
                    _raise_if_an_actor_died(runtime)
                time.sleep(0.002)
            runtime.wait()
            t2 = time.perf_counter()
            result = self.readout.result.get()[:self.n_samples]
            self.counts = self._read_counts() if self.record_counts else {}
            t3 = time.perf_counter()
            self.timings = {"compile_and_start_s": t1 - t0, "run_s": t2 - t1,
                            "read_s": t3 - t2, "steps": steps}
            finished = True
        finally:
            t4 = time.perf_counter()
            self._shutdown(graceful=finished)
            self.timings["stop_s"] = time.perf_counter() - t4
        return self._to_ann_units(result)

    def _read_counts(self) -> dict[str, np.ndarray]:
        out = {}
        for name, proc in self.neurons.items():
            shape = self.graph[name].shape
            out[name] = from_lava(proc.counts.get()[:self.n_samples], shape).astype(np.int64)
        return out

    def _to_ann_units(self, result: np.ndarray) -> np.ndarray:
        node = self.graph[self.graph.output]
        value = from_lava(result, node.shape)
        mean = value / float(node.T)
        if self.fixed_point:
            mean = mean * 2.0 ** -node.attrs["exp"]
        return mean

    def _shutdown(self, graceful: bool) -> None:
        """Stop Lava; if a graceful stop is impossible or hangs, terminate its OS processes."""
        if self._done or self.source is None or self.source.runtime is None:
            self._done = True
            return
        self._done = True
        runtime = self.source.runtime
        if graceful:
            stopper = threading.Thread(target=_quiet_stop, args=(runtime,), daemon=True)
            stopper.start()
            stopper.join(30.0)
            if not stopper.is_alive():
                return
        _terminate(runtime)

    def stop(self) -> None:
        self._shutdown(graceful=True)

    def __enter__(self) -> "LavaNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _raise_if_an_actor_died(runtime) -> None:
    """A process model that raises leaves the rest of the run waiting forever (Lava 0.10's
    runtime service does not pass the error on); its OS process has exited though, so fail
    fast with its exception instead of running into the timeout."""
    infra = getattr(runtime, "_messaging_infrastructure", None)
    for actor in list(getattr(infra, "actors", []) or []):
        if actor.is_alive():
            continue
        exc = actor.exception
        detail = ""
        if isinstance(exc, tuple) and exc:
            detail = f": {type(exc[0]).__name__}: {exc[0]}"
            if len(exc) > 1 and exc[1]:
                detail += "\n" + "\n".join(str(exc[1]).strip().splitlines()[-6:])
        raise MtdeployError(f"a Lava process exited during the run{detail}")


def _quiet_stop(runtime) -> None:
    try:
        runtime.stop()
    except Exception:  # noqa: BLE001 - a failed stop falls back to terminating below
        _terminate(runtime)


def _terminate(runtime) -> None:
    """End the runtime's own OS processes (its actors, then its shared-memory manager)."""
    infra = getattr(runtime, "_messaging_infrastructure", None)
    actors = list(getattr(infra, "actors", []) or [])
    for actor in actors:
        try:
            if actor.is_alive():
                actor.terminate()
        except (ValueError, AssertionError):
            pass
    for actor in actors:
        try:
            # Lava's SystemProcess.join() takes no timeout: use multiprocessing's own.
            multiprocessing.Process.join(actor, 5.0)
            if actor.is_alive():
                actor.kill()
                multiprocessing.Process.join(actor, 5.0)
        except (ValueError, AssertionError):
            pass
    try:
        if infra is not None and infra.smm is not None:
            infra.smm.shutdown()
    except Exception:  # noqa: BLE001 - already gone
        pass
    try:
        runtime._watchdog_manager.stop()
    except Exception:  # noqa: BLE001
        pass
    runtime._is_started = False   # keeps Runtime.__del__ from a blocking stop()
    runtime._is_running = False


def child_pids() -> set[int]:
    """Live child processes of this interpreter (Lava runs each process as one), except
    Python's shared-memory resource tracker, a singleton that lives until the interpreter
    exits. Empty after every run here: how tests check that nothing was left behind."""
    live = multiprocessing.active_children()   # also reaps children that have exited
    if not os.path.isdir("/proc"):
        return {p.pid for p in live}
    kids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != os.getpid() or fields[0] == "Z":
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"multiprocessing.resource_tracker" in fh.read():
                    continue
        except (OSError, IndexError, ValueError):
            continue
        kids.add(int(pid))
    return kids


def _lava_version() -> str:
    try:
        from importlib.metadata import version

        return version("lava-nc")
    except Exception:  # noqa: BLE001
        return "unknown"


# ---- lowering -------------------------------------------------------------------------------
def _input_batch(graph: Graph, x, fixed_point: bool) -> np.ndarray:
    want = tuple(graph.input.shape)
    x = np.asarray(x, dtype=np.float64)
    if tuple(x.shape[1:]) != want:
        raise InputError(f"input has shape {tuple(x.shape)}; the model takes "
                         f"(N, {', '.join(map(str, want))})")
    if fixed_point:
        from mtdeploy.sim.reference import quantize_input

        xi, _ = quantize_input(graph, torch.as_tensor(x))
        return to_lava(xi.numpy().astype(np.int64), want)
    return to_lava(x, want)


def lower_to_lava(graph: Graph, fixed_point: bool = True, x=None, *, seed: int | None = None,
                  record_counts: bool = False, reset: bool = True,
                  sparse_below: float = SPARSE_BELOW) -> LavaNetwork:
    """Build the Lava process graph of a converted (and, for fixed point, quantized) graph.

    ``x`` (N, *input shape) are the samples the network will run, presented one per sample
    period; without it the network holds one all-zero sample (enough for ``describe()``).
    ``seed`` is TPP's Bernoulli seed (default: the graph's). ``record_counts`` keeps per-sample
    spike counts of every population (for :func:`ladder`).
    """
    if not graph.meta.get("converted"):
        raise InputError("lower_to_lava needs a converted graph (mtdeploy.passes.convert)")
    if fixed_point and not graph.meta.get("quantized"):
        raise InputError("fixed-point lowering needs a quantized graph (mtdeploy.passes.quantize)")
    g = graph.copy()
    sched = scheduled(g)
    period = int(sched["total_steps"])
    seed = int(g.meta.get("seed", 0) if seed is None else seed)
    if x is None:
        data = np.zeros((1, *lava_shape(g.input.shape)),
                        dtype=np.int64 if fixed_point else np.float64)
    else:
        data = _input_batch(g, x, fixed_point)
    n = int(data.shape[0])
    if n < 1:
        raise InputError("no samples to run")
    net = LavaNetwork(g, fixed_point, n, period, seed, record_counts)
    ports: dict[str, Any] = {}

    for pop in populations(g):
        window = tuple(int(w) for w in pop.attrs["window"])
        if pop.kind == "input":
            net.source = SampleSource(data=data, period=period, name=f"{pop.name}:source")
            ports[pop.name] = net.source.s_out
            continue
        shape = lava_shape(pop.shape)
        info = _LayerInfo(pop.name, pop.kind, pop.attrs.get("neuron"), int(pop.T), window,
                          tuple(pop.shape), shape)
        neuron = _neuron(g, pop, shape, window, period, n, seed, fixed_point, record_counts,
                         reset)
        info.processes[type(neuron).__name__] += 1
        if pop.kind == "readout":
            net.readout = neuron
        else:
            net.neurons[pop.name] = neuron
            ports[pop.name] = neuron.s_out
        # One synapse group per edge key: a producer streaming into several paths of the
        # tree (no align nodes) is one projection, materialised once.
        groups: dict[str, list] = {}
        for edge in incoming_edges(g, pop):
            groups.setdefault(edge.align or edge.producer, []).append(edge)
        for key, edges in groups.items():
            edge = edges[0]
            target = neuron.a_in
            align_node = g[edge.align] if edge.align else None
            delay = 0
            if align_node is not None:
                align = _align(g, pop, align_node, shape, period)
                info.processes[type(align).__name__] += 1
                align.a_out.connect(neuron.a_in)
                target = align.a_in
            else:
                delay = _stream_delay(g, pop, g[edge.producer])
                if delay:
                    line = DelayLine(shape=shape, delay=delay, name=f"{pop.name}<-{key}:delay")
                    info.processes["DelayLine"] += 1
                    line.a_out.connect(neuron.a_in)
                    target = line.a_in
            entry = edge.entry if len(edges) == 1 else None
            einfo = _connect_edge(g, pop, key, entry, ports[edge.producer], target, fixed_point,
                                  sparse_below)
            einfo.align = edge.align
            einfo.delay = delay
            einfo.method = align_node.attrs["method"] if align_node is not None else None
            info.processes[einfo.synapse] += einfo.processes
            info.edges.append(einfo)
        net.layers[pop.name] = info
    return net


def _neuron(g: Graph, pop: Node, shape, window, period, n, seed, fixed, record, reset):
    name = f"{pop.name}:{pop.kind}"
    if fixed:
        bias = to_lava(np.asarray(pop.params["bias_int"], np.int64)[None], pop.shape)[0]
    else:   # the tree's current with every producer silent
        bias = to_lava(tree_float_forward(g, pop, {}, with_bias=True).numpy(), pop.shape)[0]
    if pop.kind == "readout":
        return Readout(shape=shape, bias=bias, window=window, period=period, n_samples=n,
                       name=name)
    th = int(pop.attrs["threshold_int"]) if fixed else float(pop.params["threshold"])
    if pop.attrs.get("neuron", "if") == "tpp":
        ids = to_lava(np.arange(pop.size).reshape(1, *pop.shape), pop.shape)[0]
        return TPPNeuron(shape=shape, threshold=th, bias=bias, start=window[0], T=int(pop.T),
                         period=period, seed=seed, population=pop.name, neuron_ids=ids,
                         n_samples=n, record=record, name=name)
    v0 = int(pop.attrs["v_init_int"]) if fixed else float(pop.attrs.get("v_init", 0.5)) * th
    return IFNeuron(shape=shape, threshold=th, v_init=v0, bias=bias, window=window,
                    period=period, n_samples=n, record=record, reset=reset, name=name)


def _align(g: Graph, pop: Node, node: Node, shape, period):
    """The align process after the edge's synapse: it sees the producer's output steps one hop
    late and emits over the consumer's input steps (its window's head)."""
    producer = g[node.inputs[0]]
    p_end = int(producer.attrs["window"][1])
    in_start = p_end - int(producer.T) + int(g.meta["schedule"]["hop_steps"])
    out_start = int(pop.attrs["window"][0])
    a = node.attrs
    name = f"{node.name}:{a['method']}"
    if a["method"] == "avg-repeat":
        return AlignAvgRepeat(shape=shape, in_window=(in_start, in_start + int(a["t_in"])),
                              out_window=(out_start, out_start + int(a["t_out"])),
                              period=period, name=name)
    if a["method"] == "ttm":
        return AlignTTM(shape=shape, in_start=in_start, t_in=int(a["t_in"]), out_start=out_start,
                        t_out=int(a["t_out"]), period=period, name=name)
    raise InputError(f"{node.label()}: alignment {a['method']!r} has no Lava process")


def _stream_delay(g: Graph, pop: Node, producer: Node) -> int:
    """Steps a streamed edge must wait: the consumer starts at the latest of its inputs, which
    can be after this producer's first output step plus the synapse hop."""
    first_out = int(producer.attrs["window"][1]) - int(producer.T) + int(g.meta["schedule"]["hop_steps"])
    delay = int(pop.attrs["window"][0]) - first_out
    if delay < 0:
        raise InputError(f"{pop.label()}: starts before its streamed input {producer.label()} "
                         "arrives; the schedule is inconsistent")
    return delay


def _connect_edge(g: Graph, pop: Node, key: str, entry: str | None, src_port, dst_port,
                  fixed: bool, sparse_below: float) -> _EdgeInfo:
    """Synapse processes for one edge's projection, wired src_port -> ... -> dst_port."""
    producer = g[g[key].inputs[0]] if g[key].kind == "align" else g[key]
    graded = producer.kind == "input"
    bits = (int(g.meta.get("input_bits", GRADED_BITS)) if fixed else GRADED_BITS) if graded else 0
    in_shape, out_shape = lava_shape(g[key].shape), lava_shape(pop.shape)
    conv = _plain_conv(g, pop, key, entry) if entry is not None else None
    if conv is not None:
        w = conv.params["weight_int"] if fixed else \
            conv.params["weight"].astype(np.float64) * edge_scale(g, key, 1.0)
        w = np.asarray(w)
        in_max = (2 ** (g.meta["input_bits"] - 1) - 1) if (graded and fixed) else 1
        per_out = np.abs(w).reshape(w.shape[0], -1).sum(1).max() * in_max
        if not fixed or per_out < CONV_OUT_LIMIT:
            a = conv.attrs
            proc = Conv(weight=np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))
                        .astype(np.int64 if fixed else np.float64),
                        input_shape=in_shape, padding=tuple(a["padding"][::-1]),
                        stride=tuple(a["stride"][::-1]), dilation=tuple(a["dilation"][::-1]),
                        groups=int(a["groups"]), num_message_bits=bits,
                        name=f"{conv.name}:conv")
            if tuple(proc.output_shape) != out_shape:
                raise InputError(f"{conv.label()}: Lava Conv output {proc.output_shape} != "
                                 f"population {out_shape}")
            src_port.connect(proc.s_in)
            proc.a_out.connect(dst_port)
            return _EdgeInfo(producer.name, None, None, "Conv", 1, int(np.count_nonzero(w)),
                             float(np.abs(w).max(initial=0)))
    m = edge_matrix(g, pop, key, fixed)
    src = src_port if len(in_shape) == 1 else src_port.flatten()
    if fixed:
        parts = [(2 * d, 8 * k - 1) for k, d in weight_digits(m)]
    else:
        parts = [(m, 0)]
    kinds = []
    for k, (w, exp) in enumerate(parts):
        dense = not (w.nnz <= sparse_below * w.shape[0] * w.shape[1]
                     and w.shape[0] * w.shape[1] >= SPARSE_MIN_SIZE)
        kw = dict(num_message_bits=bits, name=f"{pop.name}<-{key}:{k}")
        if fixed:
            kw.update(weight_exp=exp, num_weight_bits=8, sign_mode=SignMode.MIXED)
        proc = Dense(weights=w.toarray(), **kw) if dense else Sparse(weights=w.tocsr(), **kw)
        kinds.append(type(proc).__name__)
        src.connect(proc.s_in)
        out = proc.a_out if len(out_shape) == 1 else proc.a_out.reshape(out_shape)
        out.connect(dst_port)
    kind = kinds[0] if len(set(kinds)) == 1 else "+".join(sorted(set(kinds)))
    return _EdgeInfo(producer.name, None, None, kind, len(parts), int(m.nnz),
                     float(np.abs(m.data).max(initial=0)), len(parts) if fixed else 1)


# ---- one call -------------------------------------------------------------------------------
def run_lava(graph: Graph, x, fixed_point: bool = True, seed: int | None = None,
             timeout_s: float | None = DEFAULT_TIMEOUT_S, record_counts: bool = False):
    """Build, run every sample of ``x`` on Lava's CPU simulator, stop; -> (N, classes).

    Outputs are the readout's mean input current in the ANN's units (docs/semantics.md).
    With ``record_counts`` returns ``(output, counts)``, counts per population (N, *shape).
    """
    net = lower_to_lava(graph, fixed_point, x, seed=seed, record_counts=record_counts)
    with net:
        out = net.run(timeout_s=timeout_s)
    return (out, net.counts) if record_counts else out
