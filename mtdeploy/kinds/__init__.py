"""Every node kind, one file per family; importing this package registers them all.

conv (conv, conv1d), linear, pool (avgpool, avgpool1d), structure (input, flatten, add,
batchnorm, delay), neurons (qcfs with its IF/TPP neuron models, readout, cuba, sdnn), align. The interface
they implement is :class:`mtdeploy.ir.kind.NodeKind`; docs/architecture.md shows how to add one.
"""
from mtdeploy.ir.kind import KINDS, NodeKind, dims3, kind_for_module, kind_of, register
from mtdeploy.kinds import align, conv, linear, neurons, pool, structure
from mtdeploy.kinds.neurons import NEURONS, neuron_of

__all__ = ["KINDS", "NEURONS", "NodeKind", "dims3", "kind_for_module", "kind_of", "neuron_of",
           "register", "align", "conv", "linear", "neurons", "pool", "structure"]
