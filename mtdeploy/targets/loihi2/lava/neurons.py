"""The neuron process of each population: per population kind, and for spiking kinds per
neuron model (:func:`mtdeploy.kinds.neuron_of`).

Biases and thresholds go in the mode's units: the quantized integers in fixed point; in floating
point the float tree's current with every producer silent (the tree's summed biases).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from lava.proc.lif.process import LIFReset

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.kinds import neuron_of
from mtdeploy.kinds.neurons import ACT_SHIFT, int_thresholds, unit_shaped
from mtdeploy.targets.loihi2.lava.layout import lava_shape, one_to_lava, to_lava
from mtdeploy.targets.loihi2.lava.procs.process import (DeltaReset, IFNeuron, Readout,
                                                         SigmaDeltaReset, SigmaReset, TPPNeuron)
from mtdeploy.targets.loihi2.lava.projection import tree_float_forward
from mtdeploy.targets.loihi2.lava.tables import Build, BuilderTable

NeuronBuilder = Callable[[Build, Node], Any]

#: population kind -> its Lava process
POPULATION_KINDS: BuilderTable[NeuronBuilder] = BuilderTable("population kind")
#: neuron model of a spiking population (kind "qcfs") -> its Lava process
NEURON_MODELS: BuilderTable[NeuronBuilder] = BuilderTable("neuron model")


def neuron_process(build: Build, pop: Node):
    """The Lava process of population ``pop`` (not the input: that is the sample source):
    one process with ``a_in``, ``s_out`` and, when the build records them, ``counts``, or a
    :class:`CountedPopulation` standing for several."""
    return POPULATION_KINDS.of(pop.kind, pop)(build, pop)


def processes_of(neuron) -> tuple:
    """The Lava processes a :func:`neuron_process` result stands for."""
    return neuron.processes if isinstance(neuron, CountedPopulation) else (neuron,)


@dataclass(frozen=True)
class CountedPopulation:
    """A process that keeps no spike counts (Lava's own LIF), with a :class:`Readout` on its
    spikes that sums them over the population's window: sample n's count in ``counts[n]``."""

    neuron: Any
    counter: Readout

    @property
    def a_in(self):
        return self.neuron.a_in

    @property
    def s_out(self):
        return self.neuron.s_out

    @property
    def counts(self):
        return self.counter.result

    @property
    def processes(self) -> tuple:
        return self.neuron, self.counter


@POPULATION_KINDS.register("qcfs")
def _spiking(build: Build, pop: Node):
    return NEURON_MODELS.of(neuron_of(pop).name, pop)(build, pop)


@POPULATION_KINDS.register("readout")
def _readout(build: Build, pop: Node) -> Readout:
    return Readout(shape=lava_shape(pop.shape), bias=_bias(build, pop), window=build.window(pop),
                   period=build.period, n_samples=build.n_samples, name=_name(pop))


@POPULATION_KINDS.register("cuba")
def _cuba(build: Build, pop: Node) -> LIFReset:
    """Lava's own LIF (inside a CountedPopulation when counts are recorded), as lava-dl netx builds a CUBA block: du = iDecay - 1 (Lava adds 1),
    dv = vDecay, vth = vThMant, the bias as bias_mant with bias_exp = 6; the LIFReset
    variant, reset to rest at the first step of the population's window in every sample
    period (what the reference simulates: each window from rest).

    Outside its window the LIF keeps integrating and may fire, unlike mtdeploy's own neurons;
    that cannot reach another population's window: a stock network is a chain in which every
    population has the same T and starts one hop after its producer, so a spike sent after
    the producer's window arrives after the consumer's, and one sent before it (from the
    previous sample's state) arrives before the consumer's reset. The Readout only sums its
    own window, and counts (when recorded) come from a Readout over this population's window.
    """
    _fixed_point_only(build, pop, "a CUBA population (a NetX file's LIF neurons)",
                      "Lava's floating-point LIF is a different model (real-valued decays, no "
                      "2^6 scaling)")
    a = pop.attrs
    lif = LIFReset(shape=lava_shape(pop.shape), du=int(a["iDecay"]) - 1, dv=int(a["vDecay"]),
                   vth=int(a["vThMant"]), bias_exp=ACT_SHIFT,
                   bias_mant=one_to_lava(np.asarray(pop.params["bias_mant"], np.int64),
                                         pop.shape),
                   **_window_reset(build, pop), name=_name(pop))
    return _counted(build, pop, lif)


def _fixed_point_only(build: Build, pop: Node, what: str, why: str) -> None:
    if not build.fixed_point:
        raise InputError(f"{pop.label()}: {what} runs on Lava in fixed point only: {why}; run "
                         "it with fixed_point=True (simulate --fixed-point)")


def _window_reset(build: Build, pop: Node) -> dict:
    """Reset to rest at the first step of ``pop``'s window in every sample period (Lava's
    time steps count from 1)."""
    start, _ = build.window(pop)
    return {"reset_interval": build.period, "reset_offset": (start + 1) % build.period}


def _counted(build: Build, pop: Node, proc):
    """``proc`` alone, or with a Readout summing its output over its window when the build
    records counts (spikes, or graded payloads)."""
    if not build.record_counts:
        return proc
    counter = Readout(shape=lava_shape(pop.shape), bias=0, window=build.window(pop),
                      period=build.period, n_samples=build.n_samples, name=f"{_name(pop)}:counts")
    proc.s_out.connect(counter.a_in)
    return CountedPopulation(proc, counter)


#: sigma-delta mode (mtdeploy.kinds.neurons.SDNN_MODES) -> the Lava process netx builds for it
SDNN_PROCESSES: dict[str, type] = {"delta": DeltaReset, "sigma-delta": SigmaDeltaReset,
                                   "sigma": SigmaReset}


@POPULATION_KINDS.register("sdnn")
def _sigma_delta(build: Build, pop: Node):
    """Lava's Delta / SigmaDelta / Sigma as lava-dl netx builds an SDNN layer (vth = vThMant,
    spike_exp = state_exp = 6, the layer's bias), set where each window opens to the state the
    population starts its window from (mtdeploy.kinds.neurons.SigmaDeltaKind)."""
    _fixed_point_only(build, pop, "a sigma-delta population (a NetX file's SDNN neurons)",
                      "lava-dl's SDNN layers are fixed-point models")
    mode = pop.attrs["mode"]
    if mode not in SDNN_PROCESSES:
        raise InputError(f"{pop.label()}: sigma-delta mode {mode!r} has no Lava process")
    kind = kind_of(pop)
    init = {name: one_to_lava(np.asarray(pop.params[f"{name}_init"], np.int64), pop.shape)
            for name in kind.state if f"{name}_init" in pop.params}
    kwargs = {"shape": lava_shape(pop.shape), "init": init, **_window_reset(build, pop)}
    if mode != "sigma":
        kwargs.update(vth=int(pop.attrs["vThMant"]), spike_exp=kind.spike_exp,
                      state_exp=kind.state_exp)
    if mode == "sigma-delta":
        kwargs["bias"] = one_to_lava(np.asarray(pop.params["bias_mant"], np.int64), pop.shape)
    return _counted(build, pop, SDNN_PROCESSES[mode](**kwargs))


_sigma_delta.process_name = lambda pop: SDNN_PROCESSES[pop.attrs["mode"]].__name__


@NEURON_MODELS.register("if")
def _integrate_and_fire(build: Build, pop: Node) -> IFNeuron:
    threshold = _threshold(build, pop)
    if build.fixed_point:
        v_init = _per_neuron(pop, int_thresholds(pop)[1])
    else:
        v_init = float(pop.attrs.get("v_init", 0.5)) * threshold
    return IFNeuron(shape=lava_shape(pop.shape), threshold=threshold, v_init=v_init,
                    bias=_bias(build, pop), window=build.window(pop), period=build.period,
                    n_samples=build.n_samples, record=build.record_counts, reset=build.reset,
                    name=_name(pop))


@NEURON_MODELS.register("tpp")
def _two_phase_probabilistic(build: Build, pop: Node) -> TPPNeuron:
    # Each neuron's Bernoulli stream is keyed by its IR index, so Lava draws what the
    # reference simulator draws.
    ids = one_to_lava(np.arange(pop.size).reshape(pop.shape), pop.shape)
    return TPPNeuron(shape=lava_shape(pop.shape), threshold=_threshold(build, pop),
                     bias=_bias(build, pop), start=build.window(pop)[0], T=int(pop.T),
                     period=build.period, seed=build.seed, population=pop.name, neuron_ids=ids,
                     n_samples=build.n_samples, record=build.record_counts, name=_name(pop))


def _name(pop: Node) -> str:
    return f"{pop.name}:{pop.kind}"


def _threshold(build: Build, pop: Node) -> int | float | np.ndarray:
    if build.fixed_point:
        return _per_neuron(pop, int_thresholds(pop)[0])
    return float(pop.params["threshold"])


def _per_neuron(pop: Node, value) -> int | np.ndarray:
    """A fixed-point threshold or initial potential: one integer, or with per-channel units
    one per neuron in Lava's layout (the processes compare and subtract element-wise)."""
    if np.ndim(value) == 0:
        return int(value)
    return one_to_lava(np.broadcast_to(unit_shaped(pop, np.asarray(value, np.int64)), pop.shape),
                       pop.shape).copy()


def _bias(build: Build, pop: Node) -> np.ndarray:
    if build.fixed_point:
        return one_to_lava(np.asarray(pop.params["bias_int"], np.int64), pop.shape)
    return to_lava(tree_float_forward(build.graph, pop, {}, with_bias=True).numpy(), pop.shape)[0]
