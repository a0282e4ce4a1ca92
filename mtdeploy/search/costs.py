"""What a levels configuration costs: latency (mean/sum/max T), SynOps and energy, cores.

SynOps are counted the way the reference simulator counts them (each producer spike times its
fan-out through the projection tree into the next population; analog input edges are MACs, not
events), but from the ANN: with avg-repeat alignment a QCFS layer's spike count per neuron is
exactly its quantized level ``h * L / threshold``, and fan-out does not depend on the levels.
So one ANN pass gives the simulator's SynOps for any configuration without running T steps.
"""
from __future__ import annotations

import numpy as np
import torch

from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import is_alignment, is_source, populations, spiking_populations, tree_nodes
from mtdeploy.metrics.energy import E_AC_45NM_PJ, E_MAC_45NM_PJ
from mtdeploy.passes import convert
from mtdeploy.targets.checker import check
from mtdeploy.targets.profiles import load_profile


def latency(levels: dict[str, int]) -> dict[str, float]:
    """The three latency figures the design asks for; the papers quote only ``mean_T``."""
    ts = list(levels.values())
    return {"mean_T": float(sum(ts)) / len(ts), "sum_T": int(sum(ts)), "max_T": int(max(ts))}


def _indicator(node: Node) -> Node:
    """The same op with every nonzero weight set to 1: its output sums count events."""
    return Node(node.name, node.kind, node.inputs, node.attrs,
                {"weight_int": (np.asarray(node.params["weight"]) != 0).astype(np.float64)})


class FanoutModel:
    """Per-neuron fan-out of every QCFS population, and the input layer's MACs per sample."""

    def __init__(self, graph: Graph):
        snn = convert(graph)
        self.fanout: dict[str, torch.Tensor] = {
            n.name: torch.zeros(n.shape, dtype=torch.float64) for n in spiking_populations(snn)}
        self.input_macs = 0.0
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}
        for pop in populations(snn):
            if not is_source(pop):
                self._add_tree(snn, pop)

    def _add_tree(self, snn: Graph, pop: Node) -> None:
        leaves: list[tuple[str, torch.Tensor]] = []
        values: dict[str, torch.Tensor] = {}
        total = torch.zeros((), dtype=torch.float64)
        from_input = False
        for node in tree_nodes(snn, pop):
            if is_alignment(node):
                src = snn[node.inputs[0]]
                from_input = from_input or is_source(src)
                leaf = torch.ones((1, *src.shape), dtype=torch.float64, requires_grad=True)
                leaves.append((src.name, leaf))
                values[node.name] = leaf
                continue
            xs = [values[i] for i in node.inputs]
            if kind_of(node).weighted:
                y = kind_of(node).forward_int(_indicator(node), *xs)
                total = total + y.sum()
            else:
                y = kind_of(node).forward_int(node, *xs)
            values[node.name] = y
        if from_input:
            # The simulator counts no events into a tree that reads the analog input: it is
            # the one layer of MACs (connections per sample), which the energy figure adds.
            self.input_macs += float(total)
            return
        if not leaves or not total.requires_grad:
            return
        # A leaf on a path with no weighted op (a residual skip) has no events: grad is None.
        grads = torch.autograd.grad(total, [leaf for _, leaf in leaves], allow_unused=True)
        for (producer, _), grad in zip(leaves, grads):
            if grad is not None:
                self.fanout[producer] += grad[0]

    def synops(self, counts: dict[str, torch.Tensor]) -> float:
        """Total events for spike counts ``{qcfs layer: (N, *shape)}`` (whole batch)."""
        total = 0.0
        for name, c in counts.items():
            total += float((c.to(torch.float64) * self._fanout_on(name, c.device)).sum())
        return total

    def _fanout_on(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._on_device:
            self._on_device[key] = self.fanout[name].to(device)
        return self._on_device[key]

    def energy_pj(self, synops_per_sample: float) -> float:
        """Energy per sample in the papers' convention: AC per event plus MACs on the input."""
        return E_AC_45NM_PJ * synops_per_sample + E_MAC_45NM_PJ * self.input_macs


def spike_counts(activations: dict[str, torch.Tensor], levels: dict[str, int],
                 thresholds: dict[str, float]) -> dict[str, torch.Tensor]:
    """QCFS outputs -> spike counts per neuron (``h * L / threshold``, an integer in [0, L])."""
    return {name: torch.round(a.detach().to(torch.float64) * (levels[name] / thresholds[name]))
            for name, a in activations.items()}


class CoreCounter:
    """Neuro-cores a configuration needs on a target, from the budget checker.

    Core use depends on T (accumulator and state bits per neuron), so it is asked per
    configuration: ``mtdeploy.targets.checker.check`` costs the graph as the default conversion
    builds it and packs it into cores (greedy placement: the core count does not depend on how
    cores are spread over chips). Whether the configuration fits the target comes with it.
    """

    def __init__(self, target: str):
        self._check = check
        self.profile = load_profile(target)
        self.target = target
        self._cache: dict[tuple, tuple[int, bool]] = {}

    def cores(self, graph: Graph) -> tuple[int, bool]:
        """(cores, fits the target) for an imported graph whose QCFS levels are the
        configuration to cost."""
        key = tuple((n.name, int(n.attrs["levels"])) for n in spiking_populations(graph))
        if key not in self._cache:
            report = self._check(graph, self.profile, strategy="greedy", suggest=False)
            self._cache[key] = (int(report.totals["cores"]), bool(report.fits))
        return self._cache[key]
