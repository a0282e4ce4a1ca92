"""The neuron process of each population: per population kind, and for spiking kinds per
neuron model (:func:`mtdeploy.kinds.neuron_of`).

Biases and thresholds go in the mode's units: the quantized integers in fixed point; in floating
point the float tree's current with every producer silent (the tree's summed biases).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mtdeploy.ir.graph import Node
from mtdeploy.kinds import neuron_of
from mtdeploy.targets.loihi2.lava.layout import lava_shape, one_to_lava, to_lava
from mtdeploy.targets.loihi2.lava.procs.process import IFNeuron, Readout, TPPNeuron
from mtdeploy.targets.loihi2.lava.projection import tree_float_forward
from mtdeploy.targets.loihi2.lava.tables import Build, BuilderTable

NeuronBuilder = Callable[[Build, Node], Any]

#: population kind -> its Lava process
POPULATION_KINDS: BuilderTable[NeuronBuilder] = BuilderTable("population kind")
#: neuron model of a spiking population (kind "qcfs") -> its Lava process
NEURON_MODELS: BuilderTable[NeuronBuilder] = BuilderTable("neuron model")


def neuron_process(build: Build, pop: Node):
    """The Lava process of population ``pop`` (not the input: that is the sample source)."""
    return POPULATION_KINDS.of(pop.kind, pop)(build, pop)


@POPULATION_KINDS.register("qcfs")
def _spiking(build: Build, pop: Node):
    return NEURON_MODELS.of(neuron_of(pop).name, pop)(build, pop)


@POPULATION_KINDS.register("readout")
def _readout(build: Build, pop: Node) -> Readout:
    return Readout(shape=lava_shape(pop.shape), bias=_bias(build, pop), window=build.window(pop),
                   period=build.period, n_samples=build.n_samples, name=_name(pop))


@NEURON_MODELS.register("if")
def _integrate_and_fire(build: Build, pop: Node) -> IFNeuron:
    threshold = _threshold(build, pop)
    if build.fixed_point:
        v_init = int(pop.attrs["v_init_int"])
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


def _threshold(build: Build, pop: Node) -> int | float:
    if build.fixed_point:
        return int(pop.attrs["threshold_int"])
    return float(pop.params["threshold"])


def _bias(build: Build, pop: Node) -> np.ndarray:
    if build.fixed_point:
        return one_to_lava(np.asarray(pop.params["bias_int"], np.int64), pop.shape)
    return to_lava(tree_float_forward(build.graph, pop, {}, with_bias=True).numpy(), pop.shape)[0]
