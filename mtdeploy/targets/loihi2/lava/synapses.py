"""The synapse processes of one edge: its whole projection tree as Lava ``Conv``, ``Dense`` or
``Sparse`` processes.

An edge whose tree is one node of a kind in :data:`OWN_PROCESS_KINDS` (a plain convolution),
followed only by nodes the neuron's input port computes itself (:data:`PORT_SUMMED_KINDS`: adds,
with unit gains), becomes that kind's own process; every other edge becomes the materialised
integer matrix (:func:`~.projection.edge_matrix`) in ``Dense`` or, when sparse, ``Sparse``.

Lava's Dense/Sparse ``fixed_pt`` models clip weights to 8 bits and, for mixed-sign matrices, drop
the least significant bit. Integers are therefore sent as ``2*w`` with ``weight_exp = -1`` (an
exact right shift of an even sum); a matrix with entries beyond [-128, 127] (sums through pools)
is split into base-256 digit matrices, one synapse process each, with ``weight_exp = 8k - 1``.
Lava's ``Conv`` ignores ``weight_exp`` and wraps its output to 24 bits, so a conv becomes
``Conv`` only when its worst-case output fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.sparse.process import Sparse
from lava.utils.weightutils import SignMode

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
from mtdeploy.ir.snn import is_source
from mtdeploy.kinds.align import edge_scale
from mtdeploy.targets.loihi2.lava.layout import lava_shape
from mtdeploy.targets.loihi2.lava.projection import edge_chain, edge_matrix, weight_digits
from mtdeploy.targets.loihi2.lava.tables import Build, BuilderTable

SYNAPSE_HOP = 1             # steps a Dense/Sparse/Conv process delays its input (measured)
CONV_OUT_LIMIT = 2 ** 23    # Lava's fixed-point Conv wraps a_out to signed 24 bits
SPARSE_BELOW = 0.1          # density under which a matrix becomes a Sparse process
SPARSE_MIN_SIZE = 1024      # ... if it has at least this many entries
GRADED_BITS = 24            # num_message_bits of graded input without a quantized input width


@dataclass
class SynapseInfo:
    """What one edge's synapse processes are, for :meth:`LavaNetwork.describe`."""

    synapse: str            # the Lava process kind(s): "Conv", "Dense", "Sparse", "Dense+Sparse"
    processes: int
    nnz: int
    max_abs_weight: float
    digits: int = 1         # base-256 weight digits (one process each)


@dataclass
class Wire:
    """One edge's ends: its producer (population node), the tree input it enters at (``key``:
    the producer or the edge's align node), the first tree node when the edge is the only one
    from ``key`` (else None), and the Lava ports the synapses connect."""

    producer: Node
    key: str
    entry: str | None
    src: Any                # producer's OutPort
    dst: Any                # InPort of the edge's timing process, or of the neuron

    def message_bits(self, build: Build) -> int:
        """0 for binary spikes; the quantized input width for the graded input."""
        if not is_source(self.producer):
            return 0
        return int(build.graph.meta.get("input_bits", GRADED_BITS)) if build.fixed_point \
            else GRADED_BITS


#: (build, population, wire, head node) -> the head's own synapse process, or None if it cannot
OwnProcessBuilder = Callable[[Build, Node, Wire, Node], "SynapseInfo | None"]

#: kinds whose node, alone on an edge, may become a Lava synapse process of its own
OWN_PROCESS_KINDS: BuilderTable[OwnProcessBuilder] = BuilderTable("synapse kind")
#: kinds the neuron's input port computes by itself after that node: it sums its connections
PORT_SUMMED_KINDS = frozenset({"add"})


def connect_synapses(build: Build, pop: Node, wire: Wire) -> SynapseInfo:
    """Synapse processes for one edge's projection, wired ``wire.src`` -> ... -> ``wire.dst``."""
    head = _own_process_head(build, pop, wire)
    if head is not None:
        info = OWN_PROCESS_KINDS.of(head.kind, head)(build, pop, wire, head)
        if info is not None:
            return info
    return _matrix_synapses(build, pop, wire)


def _own_process_head(build: Build, pop: Node, wire: Wire) -> Node | None:
    """The edge's first tree node if the projection is exactly that node (what follows only
    sums, every gain on the way is 1) and its kind has a process of its own."""
    if wire.entry is None:
        return None
    chain = edge_chain(build.graph, pop, wire.entry)
    if not chain or chain[0].kind not in OWN_PROCESS_KINDS \
            or any(n.kind not in PORT_SUMMED_KINDS for n in chain[1:]):
        return None
    prev = wire.key
    for node in chain + [pop]:
        if _gain_on(node, prev) != 1:
            return None
        prev = node.name
    return chain[0]


def _gain_on(node: Node, src: str) -> int:
    gains = node.attrs.get("input_gain_int")
    return int(gains[node.inputs.index(src)]) if gains else 1


@OWN_PROCESS_KINDS.register("conv")
def _conv(build: Build, pop: Node, wire: Wire, conv: Node) -> SynapseInfo | None:
    """A Lava ``Conv`` (weights (C_out, W, H, C_in), kernels flipped), or None where its
    fixed-point output could wrap."""
    w = _conv_weights(build, wire.key, conv)
    if build.fixed_point and _conv_worst_output(build, wire, w) >= CONV_OUT_LIMIT:
        return None
    a = conv.attrs
    proc = Conv(weight=np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))
                .astype(np.int64 if build.fixed_point else np.float64),
                input_shape=lava_shape(build.graph[wire.key].shape),
                padding=tuple(a["padding"][::-1]), stride=tuple(a["stride"][::-1]),
                dilation=tuple(a["dilation"][::-1]), groups=int(a["groups"]),
                num_message_bits=wire.message_bits(build), name=f"{conv.name}:conv")
    if tuple(proc.output_shape) != lava_shape(pop.shape):
        raise InputError(f"{conv.label()}: Lava Conv output {proc.output_shape} != "
                         f"population {lava_shape(pop.shape)}")
    wire.src.connect(proc.s_in)
    proc.a_out.connect(wire.dst)
    return SynapseInfo("Conv", 1, int(np.count_nonzero(w)), float(np.abs(w).max(initial=0)))


def _conv_weights(build: Build, key: str, conv: Node) -> np.ndarray:
    if build.fixed_point:
        return np.asarray(conv.params["weight_int"])
    return np.asarray(conv.params["weight"].astype(np.float64) * edge_scale(build.graph, key, 1.0))


def _conv_worst_output(build: Build, wire: Wire, w: np.ndarray) -> float:
    """The largest |output| a fixed-point conv can produce: a kernel's |weights| summed times
    the largest input (a spike, or the graded input's largest integer)."""
    in_max = 2 ** (build.graph.meta["input_bits"] - 1) - 1 if is_source(wire.producer) else 1
    return np.abs(w).reshape(w.shape[0], -1).sum(1).max() * in_max


def _matrix_synapses(build: Build, pop: Node, wire: Wire) -> SynapseInfo:
    """The materialised matrix as Dense/Sparse processes, one per base-256 digit in fixed
    point, all from ``wire.src`` into ``wire.dst``."""
    m = edge_matrix(build.graph, pop, wire.key, build.fixed_point)
    in_shape, out_shape = lava_shape(build.graph[wire.key].shape), lava_shape(pop.shape)
    src = wire.src if len(in_shape) == 1 else wire.src.flatten()
    parts = _weight_parts(build, m)
    kinds = set()
    for k, (w, exp) in enumerate(parts):
        proc = _matrix_process(build, w, exp, wire.message_bits(build),
                               name=f"{pop.name}<-{wire.key}:{k}")
        kinds.add(type(proc).__name__)
        src.connect(proc.s_in)
        out = proc.a_out if len(out_shape) == 1 else proc.a_out.reshape(out_shape)
        out.connect(wire.dst)
    return SynapseInfo("+".join(sorted(kinds)), len(parts), int(m.nnz),
                       float(np.abs(m.data).max(initial=0)),
                       len(parts) if build.fixed_point else 1)


def _weight_parts(build: Build, m: sp.csr_matrix) -> list[tuple[sp.csr_matrix, int]]:
    """(weights, weight_exp) per synapse process: 2 * digit_k with exponent 8k - 1 in fixed
    point (see the module docstring), the float matrix itself otherwise."""
    if build.fixed_point:
        return [(2 * d, 8 * k - 1) for k, d in weight_digits(m)]
    return [(m, 0)]


def _matrix_process(build: Build, w: sp.csr_matrix, weight_exp: int, bits: int, name: str):
    size = w.shape[0] * w.shape[1]
    sparse = w.nnz <= build.sparse_below * size and size >= SPARSE_MIN_SIZE
    kw: dict[str, Any] = dict(num_message_bits=bits, name=name)
    if build.fixed_point:
        kw.update(weight_exp=weight_exp, num_weight_bits=8, sign_mode=SignMode.MIXED)
    return Sparse(weights=w.tocsr(), **kw) if sparse else Dense(weights=w.toarray(), **kw)
