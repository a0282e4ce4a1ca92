"""The synapse processes of one edge: its whole projection tree as Lava ``Conv``, ``Dense`` or
``Sparse`` processes.

An edge whose tree is one node of a kind in :data:`OWN_PROCESS_KINDS` (a plain convolution),
followed only by nodes the neuron's input port computes itself (:data:`PORT_SUMMED_KINDS`: adds,
with unit gains), becomes that kind's own process. In fixed point every other edge takes its
form (:func:`~.projection.edge_form`): a local tree (a pool before a conv, a residual branch
with its gain, an identity shortcut) is one composed kernel and becomes a ``Conv`` too when the
kernel is an 8-bit mantissa; the rest becomes its integer matrix in ``Dense`` or, when sparse,
``Sparse``. Each edge is planned first (:func:`plan_synapses`: what it becomes, with its
non-zeros and digits from the form) and built on connect, so a description builds no matrix.

Lava's Dense/Sparse ``fixed_pt`` models clip weights to 8 bits and, for mixed-sign matrices, drop
the least significant bit. Integers are therefore sent as ``2*w`` with ``weight_exp = -1`` (an
exact right shift of an even sum); a matrix with entries beyond [-128, 127] (sums through pools)
is split into base-256 digit matrices, one synapse process each, with ``weight_exp = 8k - 1``.
Lava's ``Conv`` ignores ``weight_exp`` and wraps its output to 24 bits, so a conv becomes
``Conv`` only when its worst-case output fits.

An edge whose fan-in was split (``attrs["fan_in_split"]`` on the consumer, targets/fanin.py)
becomes, per block of the producer, the matrix restricted to that block's columns (every digit
process of the whole matrix, masked) into a ``PartialSum`` process, which forwards the block's
current one hop later; the consumer's port adds the blocks, so the sum is the unsplit edge's.
"""
from __future__ import annotations

import math
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
from mtdeploy.ir.kind import dims3
from mtdeploy.ir.snn import is_source
from mtdeploy.kinds import kind_of
from mtdeploy.kinds.align import edge_scale
from mtdeploy.passes.quantize import mantissa_bits
from mtdeploy.targets.fanin import block_bounds
from mtdeploy.targets.loihi2.forms import ConvForm
from mtdeploy.targets.loihi2.lava.layout import lava_order, lava_shape
from mtdeploy.targets.loihi2.lava.procs.process import PartialSum
from mtdeploy.targets.loihi2.lava.projection import (ProbedForm, edge_chain, edge_form,
                                                     edge_matrix, gain_on, matrix_figures,
                                                     to_lava_matrix, weight_digits)
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
    partial_sums: int = 0   # PartialSum stages of a split fan-in (one per producer block)


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
    counts_max: int = 0     # > 0: graded spike counts up to this (behind a counts stage)

    def message_bits(self, build: Build) -> int:
        """0 for binary spikes; the quantized input width for the graded input or counts; the
        full graded width for a population with graded spikes (sigma-delta)."""
        if self.counts_max or kind_of(self.producer).graded:
            return GRADED_BITS
        if not is_source(self.producer):
            return 0
        return int(build.graph.meta.get("input_bits", GRADED_BITS)) if build.fixed_point \
            else GRADED_BITS


@dataclass
class SynapsePlan:
    """One edge's synapses, decided: what they are (``info``) and how to build and wire them
    (``connect(wire)``, which a description never calls, so no matrix is built for it)."""

    info: SynapseInfo
    connect: Callable[[Wire], None]


#: (build, population, wire, head node) -> the plan of the head's own synapse process, or None
OwnProcessBuilder = Callable[[Build, Node, Wire, Node], "SynapsePlan | None"]

#: kinds whose node, alone on an edge, may become a Lava synapse process of its own
OWN_PROCESS_KINDS: BuilderTable[OwnProcessBuilder] = BuilderTable("synapse kind")
#: kinds the neuron's input port computes by itself after that node: it sums its connections
PORT_SUMMED_KINDS = frozenset({"add"})


def connect_synapses(build: Build, pop: Node, wire: Wire) -> SynapseInfo:
    """Synapse processes for one edge's projection, wired ``wire.src`` -> ... -> ``wire.dst``."""
    plan = plan_synapses(build, pop, wire)
    plan.connect(wire)
    return plan.info


def plan_synapses(build: Build, pop: Node, wire: Wire) -> SynapsePlan:
    """The edge's synapses: the head node's own process (a plain conv), else in fixed point
    the edge's form (:func:`~.projection.edge_form`) as a ``Conv`` where it is a kernel that
    fits one, else its matrix as Dense/Sparse digit processes."""
    blocks = pop.attrs.get("fan_in_split", {}).get(wire.producer.name)
    if blocks and math.prod(blocks) > 1:
        form = edge_form(build.graph, pop, wire.key) if build.fixed_point else \
            ProbedForm(edge_matrix(build.graph, pop, wire.key, False))
        return _matrix_plan(build, pop, wire, form, not build.fixed_point, tuple(blocks))
    head = _own_process_head(build, pop, wire)
    if head is not None:
        plan = OWN_PROCESS_KINDS.of(head.kind, head)(build, pop, wire, head)
        if plan is not None:
            return plan
    if not build.fixed_point:
        return _matrix_plan(build, pop, wire, ProbedForm(edge_matrix(build.graph, pop, wire.key,
                                                                     False)), lava_order=True)
    form = edge_form(build.graph, pop, wire.key)
    if isinstance(form, ConvForm):
        plan = _form_conv(build, pop, wire, form)
        if plan is not None:
            return plan
    return _matrix_plan(build, pop, wire, form)


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
        if gain_on(node, prev) != 1:
            return None
        prev = node.name
    return chain[0]


@OWN_PROCESS_KINDS.register("conv")
def _conv(build: Build, pop: Node, wire: Wire, conv: Node) -> SynapsePlan | None:
    """The conv node as a Lava ``Conv``, or None where its fixed-point output could wrap."""
    a = conv.attrs
    return _conv_plan(build, pop, wire, _conv_weights(build, wire.key, conv), a["stride"],
                      a["padding"], a["dilation"], int(a["groups"]), f"{conv.name}:conv")


def _form_conv(build: Build, pop: Node, wire: Wire, form: ConvForm) -> SynapsePlan | None:
    """A local tree's composed kernel as a Lava ``Conv`` when its weights are an 8-bit
    mantissa under one exponent (as the network's weights) and its output cannot wrap."""
    if mantissa_bits(form.weight) > int(build.graph.meta.get("weight_bits", 8)):
        return None
    return _conv_plan(build, pop, wire, form.weight, form.stride, form.padding, (1, 1),
                      form.groups, f"{pop.name}<-{wire.key}:conv")


def _conv_plan(build: Build, pop: Node, wire: Wire, w: np.ndarray, stride, padding, dilation,
               groups: int, name: str) -> SynapsePlan | None:
    """A Lava ``Conv`` (weights (C_out, W, H, C_in), kernels flipped), or None where its
    fixed-point output could wrap."""
    if build.fixed_point and _conv_worst_output(build, wire, w) >= CONV_OUT_LIMIT:
        return None

    def connect(wire: Wire) -> None:
        proc = Conv(weight=np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))
                    .astype(np.int64 if build.fixed_point else np.float64),
                    input_shape=lava_shape(build.graph[wire.key].shape),
                    padding=tuple(padding[::-1]), stride=tuple(stride[::-1]),
                    dilation=tuple(dilation[::-1]), groups=groups,
                    num_message_bits=wire.message_bits(build), name=name)
        if tuple(proc.output_shape) != lava_shape(pop.shape):
            raise InputError(f"{name}: Lava Conv output {proc.output_shape} != "
                             f"population {lava_shape(pop.shape)}")
        wire.src.connect(proc.s_in)
        proc.a_out.connect(wire.dst)

    info = SynapseInfo("Conv", 1, int(np.count_nonzero(w)), float(np.abs(w).max(initial=0)))
    return SynapsePlan(info, connect)


def _conv_weights(build: Build, key: str, conv: Node) -> np.ndarray:
    if build.fixed_point:
        return np.asarray(conv.params["weight_int"])
    return np.asarray(conv.params["weight"].astype(np.float64) * edge_scale(build.graph, key, 1.0))


def _conv_worst_output(build: Build, wire: Wire, w: np.ndarray) -> float:
    """The largest |output| a fixed-point conv can produce: a kernel's |weights| summed times
    the largest input (a spike, a count, or a graded input's or graded spike's largest
    integer)."""
    if kind_of(wire.producer).graded:
        in_max = 2 ** (GRADED_BITS - 1) - 1
    elif is_source(wire.producer):
        in_max = 2 ** (build.graph.meta["input_bits"] - 1) - 1
    else:
        in_max = max(1, wire.counts_max)
    return np.abs(w).reshape(w.shape[0], -1).sum(1).max() * in_max


def _matrix_plan(build: Build, pop: Node, wire: Wire, form, lava_order: bool = False,
                 blocks: tuple[int, int, int] | None = None) -> SynapsePlan:
    """The edge's matrix as Dense/Sparse processes, one per base-256 digit in fixed point,
    all from ``wire.src`` into ``wire.dst`` (with ``blocks``: per producer block, every digit
    process masked to the block's columns, into that block's ``PartialSum``); decided from the
    form's figures, built (in Lava's layouts, unless ``lava_order`` says the form already is)
    only on connect."""
    in_shape = build.graph[wire.key].shape
    size = pop.size * int(np.prod(in_shape))
    fig = matrix_figures(*form.values_and_counts())
    parts = fig.digits if build.fixed_point else [(0, fig.nnz)]
    kinds = [_matrix_kind(build, nnz, size) for _, nnz in parts]
    n_blocks = math.prod(blocks) if blocks else 1

    def connect(wire: Wire) -> None:
        m = form.matrix()
        m = m if lava_order else to_lava_matrix(m, pop.shape, in_shape)
        src = wire.src if len(lava_shape(in_shape)) == 1 else wire.src.flatten()
        out_shape = lava_shape(pop.shape)
        column_block = _column_blocks(in_shape, blocks)
        weights = _weight_parts(build, m)
        for b in range(n_blocks):
            dst = wire.dst
            if blocks:
                stage = PartialSum(shape=out_shape, name=f"{pop.name}<-{wire.key}:partial{b}")
                stage.a_out.connect(wire.dst)
                dst = stage.a_in
            for k, (w, exp) in enumerate(weights):
                if blocks:
                    w = sp.csr_matrix(w.multiply((column_block == b)[None, :]))
                name = f"{pop.name}<-{wire.key}:{k}" + (f".{b}" if blocks else "")
                proc = _matrix_process(build, w, exp, wire.message_bits(build), kinds[k], name)
                src.connect(proc.s_in)
                out = proc.a_out if len(out_shape) == 1 else proc.a_out.reshape(out_shape)
                out.connect(dst)

    info = SynapseInfo("+".join(sorted(set(kinds))), len(parts) * n_blocks, fig.nnz, fig.max_abs,
                       len(parts) if build.fixed_point else 1, n_blocks if blocks else 0)
    return SynapsePlan(info, connect)


def _column_blocks(in_shape, blocks) -> np.ndarray:
    """The producer block (C-order over ``blocks``) of each Lava-layout input column."""
    shape = dims3(in_shape)
    if not blocks:
        return np.zeros(int(np.prod(shape)), np.int64)
    ids = [np.searchsorted(block_bounds(n, k), np.arange(n), side="right") - 1
           for n, k in zip(shape, blocks)]
    grid = (ids[0][:, None, None] * blocks[1] + ids[1][None, :, None]) * blocks[2] \
        + ids[2][None, None, :]
    return grid.ravel()[lava_order(in_shape)]


def _weight_parts(build: Build, m: sp.csr_matrix) -> list[tuple[sp.csr_matrix, int]]:
    """(weights, weight_exp) per synapse process: 2 * digit_k with exponent 8k - 1 in fixed
    point (see the module docstring), the float matrix itself otherwise."""
    if build.fixed_point:
        return [(2 * d, 8 * k - 1) for k, d in weight_digits(m)]
    return [(m, 0)]


def _matrix_kind(build: Build, nnz: int, size: int) -> str:
    """Sparse when the matrix is large and sparse enough, else Dense."""
    return "Sparse" if nnz <= build.sparse_below * size and size >= SPARSE_MIN_SIZE else "Dense"


def _matrix_process(build: Build, w: sp.csr_matrix, weight_exp: int, bits: int, kind: str,
                    name: str):
    kw: dict[str, Any] = dict(num_message_bits=bits, name=name)
    if build.fixed_point:
        kw.update(weight_exp=weight_exp, num_weight_bits=8, sign_mode=SignMode.MIXED)
    if kind == "Sparse":
        return Sparse(weights=w.tocsr(), **kw)
    return Dense(weights=w.toarray(), **kw)
