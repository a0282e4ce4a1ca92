"""A converted, quantized MT-SNN graph as a Lava network: build it, run it, describe it.

:func:`lower_to_lava` checks the graph and its samples and builds the processes
(:mod:`.lowering`); :class:`LavaNetwork` holds them, reports what was built and runs them through
:mod:`.runtime`; :func:`run_lava` does all three for one batch.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph
from mtdeploy.ir.snn import populations
from mtdeploy.kinds.neurons import units_of
from mtdeploy.passes.schedule import scheduled
from mtdeploy.sim.reference import quantize_input
from mtdeploy.targets.loihi2.lava.layout import from_lava, lava_shape, to_lava
from mtdeploy.targets.loihi2.lava.lowering import Lowered, lower_processes, plan_layers
from mtdeploy.targets.loihi2.lava.runtime import (DEFAULT_TIMEOUT_S, LavaRuntime, child_pids,
                                                  lava_version)
from mtdeploy.targets.loihi2.lava.synapses import SPARSE_BELOW, SYNAPSE_HOP
from mtdeploy.targets.loihi2.lava.tables import Build

__all__ = ["LavaNetwork", "describe_lava", "lower_to_lava", "run_lava", "sample_period",
           "SYNAPSE_HOP",
           "child_pids"]


class LavaNetwork:
    """A built Lava process graph for one converted graph and a batch of samples.

    ``run()`` executes every sample in one Lava run, a new one every ``period`` steps (the full
    latency, or pipelined the longest window: several samples in flight, each population on
    its own; state re-initialised at each window start) and always releases Lava's OS
    processes.
    """

    def __init__(self, build: Build, lowered: Lowered):
        self.build = build
        self.graph = build.graph
        self.fixed_point = build.fixed_point
        self.n_samples = build.n_samples
        self.period = build.period
        self.total_steps = build.total_steps
        self.seed = build.seed
        self.record_counts = build.record_counts
        self.hop = build.hop
        self.source = lowered.source
        self.readout = lowered.readout
        self.neurons: dict[str, Any] = lowered.neurons
        self.layers = lowered.layers
        self.counts: dict[str, np.ndarray] = {}
        self.runtime = LavaRuntime(self.source, build.select_tag, self.process_count())

    @property
    def timings(self) -> dict[str, float]:
        """Wall-clock seconds of the last run's phases."""
        return self.runtime.timings

    # ---- report ---------------------------------------------------------------------------
    def process_count(self) -> int:
        return 1 + sum(sum(l.processes.values()) for l in self.layers.values())

    def describe(self) -> dict:
        """What was built, per layer: window, processes by kind, and each edge's synapse."""
        return _description(self.build, self.layers)

    # ---- running ----------------------------------------------------------------------------
    def run(self, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> np.ndarray:
        """Run all samples; returns the readout (N, *out shape) in the ANN's units.

        Runs once; see :meth:`LavaRuntime.run` for the timeout and how it always stops Lava.
        """
        result = self.runtime.run(self.total_steps, self._read, timeout_s)
        return self._to_ann_units(result)

    def _read(self) -> np.ndarray:
        """The readout's accumulated values, and the spike counts if recorded."""
        result = self.readout.result.get()[:self.n_samples]
        self.counts = self._read_counts() if self.record_counts else {}
        return result

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
            mean = mean * units_of(node)
        return mean

    def stop(self) -> None:
        self.runtime.stop(graceful=True)

    def __enter__(self) -> "LavaNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _description(build: Build, layers: dict) -> dict:
    totals: Counter = Counter({"SampleSource": 1})
    for info in layers.values():
        totals.update(info.processes)
    return {"backend": "lava", "lava_version": lava_version(), "mode": build.select_tag,
            "hop_steps": build.hop, "steps_per_sample": build.latency,
            "sample_interval": build.period, "pipelined": build.period < build.latency,
            "samples": build.n_samples, "total_steps": build.total_steps,
            "process_count": sum(totals.values()), "processes_by_kind": dict(totals),
            "layers": [info.describe() for info in layers.values()]}


def describe_lava(graph: Graph, sparse_below: float = SPARSE_BELOW) -> dict:
    """``lower_to_lava(graph).describe()`` (fixed point, one sample) without building a
    process or a matrix: what the compile report says of the Lava network, in seconds for an
    ImageNet VGG-16 whose lowering would hold billions of synapses."""
    _check_lowerable(graph, True)
    sched = scheduled(graph)
    build = Build(graph, True, n_samples=1, period=sample_period(graph),
                  hop=int(sched["hop_steps"]), seed=int(graph.meta.get("seed", 0)),
                  record_counts=False, reset=True, sparse_below=sparse_below,
                  latency=int(sched["total_steps"]))
    return _description(build, plan_layers(build))


def _check_lowerable(graph: Graph, fixed_point: bool) -> None:
    if not graph.meta.get("converted"):
        raise InputError("lower_to_lava needs a converted graph (mtdeploy.passes.convert)")
    if fixed_point and not graph.meta.get("quantized"):
        raise InputError("fixed-point lowering needs a quantized graph (mtdeploy.passes.quantize)")


def lower_to_lava(graph: Graph, fixed_point: bool = True, x=None, *, seed: int | None = None,
                  record_counts: bool = False, reset: bool = True,
                  sparse_below: float = SPARSE_BELOW, pipeline: bool = True) -> LavaNetwork:
    """Build the Lava process graph of a converted (and, for fixed point, quantized) graph.

    ``x`` (N, *input shape) are the samples the network will run, presented one per sample
    period; without it the network holds one all-zero sample (enough for ``describe()``).
    ``seed`` is TPP's Bernoulli seed (default: the graph's). ``record_counts`` keeps per-sample
    spike counts of every population (for :func:`ladder`). ``pipeline``: a new sample every
    pipelined interval (:func:`sample_period`) instead of every full latency.
    """
    _check_lowerable(graph, fixed_point)
    g = graph.copy()
    sched = scheduled(g)
    data = _input_batch(g, x, fixed_point)
    if data.shape[0] < 1:
        raise InputError("no samples to run")
    build = Build(g, fixed_point, n_samples=int(data.shape[0]),
                  period=sample_period(g, pipeline and reset), hop=int(sched["hop_steps"]),
                  seed=int(g.meta.get("seed", 0) if seed is None else seed),
                  record_counts=record_counts, reset=reset, sparse_below=sparse_below,
                  latency=int(sched["total_steps"]))
    return LavaNetwork(build, lower_processes(build, data))


def sample_period(graph: Graph, pipeline: bool = True) -> int:
    """Steps between two samples entering: the stored schedule's latency (``total_steps``), or
    pipelined its interval, the longest population window (schedule.json's
    ``pipeline_interval_steps``): a population is busy with one sample for at most that long,
    and each process keeps its own windows per sample (procs/process.py). Pipelining needs the
    state re-initialised at every window start, so ``reset=False`` runs are never pipelined."""
    latency = int(scheduled(graph)["total_steps"])
    if not pipeline:
        return latency
    windows = [int(p.attrs["window"][1]) - int(p.attrs["window"][0]) for p in populations(graph)]
    return min(latency, max(windows))


def _input_batch(graph: Graph, x, fixed_point: bool) -> np.ndarray:
    """The samples in Lava's layout (quantized in fixed point); one zero sample without ``x``."""
    want = tuple(graph.input.shape)
    if x is None:
        return np.zeros((1, *lava_shape(want)), dtype=np.int64 if fixed_point else np.float64)
    x = np.asarray(x, dtype=np.float64)
    if tuple(x.shape[1:]) != want:
        raise InputError(f"input has shape {tuple(x.shape)}; the model takes "
                         f"(N, {', '.join(map(str, want))})")
    if fixed_point:
        xi, _ = quantize_input(graph, torch.as_tensor(x))
        return to_lava(xi.numpy().astype(np.int64), want)
    return to_lava(x, want)


def run_lava(graph: Graph, x, fixed_point: bool = True, seed: int | None = None,
             timeout_s: float | None = DEFAULT_TIMEOUT_S, record_counts: bool = False,
             pipeline: bool = True):
    """Build, run every sample of ``x`` on Lava's CPU simulator, stop; -> (N, classes).

    Outputs are the readout's mean input current in the ANN's units (docs/semantics.md).
    With ``record_counts`` returns ``(output, counts)``, counts per population (N, *shape).
    ``pipeline``: samples overlap, one entering every pipelined interval (same results).
    """
    net = lower_to_lava(graph, fixed_point, x, seed=seed, record_counts=record_counts,
                        pipeline=pipeline)
    with net:
        out = net.run(timeout_s=timeout_s)
    return (out, net.counts) if record_counts else out
