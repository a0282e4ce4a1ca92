"""An edge's projection (the tree of linear nodes between a producer and a population), as the
nodes it passes through and as a matrix in Lava's flat layouts.

Every form is read from the reference simulator's integer tree (docs/semantics.md §3), so
Lava's synapses compute exactly what the reference computes. In fixed point an edge has the
cheapest form that holds it (:func:`edge_form`): one convolution kernel for a local tree
(kernels.py), the weight matrix of its one matrix node, or else the matrix probed from the
tree (:func:`chw_matrix`, column by column or, with fewer outputs, row by row). The figures the
lowering decides on (non-zeros, digit matrices) come from the form (:func:`matrix_figures`),
so describing a network never builds its matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import incoming_edges, is_alignment, tree_nodes
from mtdeploy.kinds.align import edge_scale
from mtdeploy.sim.reference import tree_int_forward
from mtdeploy.targets.loihi2.forms import (LAYOUT_KINDS, MATRIX_PARAMS, composed_conv, edge_path,
                                          gain_on, matrix_tail, merged_counts, probed_blocks,
                                          probed_matrix, value_counts)
from mtdeploy.targets.loihi2.lava.layout import lava_order


def edge_chain(graph: Graph, pop: Node, entry: str) -> list[Node]:
    """Tree nodes from ``entry`` (the edge's first tree node, or its align node, exclusive)
    down to ``pop`` (exclusive). Trees are unshared: each tree node has one consumer."""
    chain, node = [], graph[entry]
    if is_alignment(node):
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


def edge_matrix(graph: Graph, pop: Node, key: str, fixed_point: bool,
                chunk_entries: int = 2 ** 22) -> sp.csr_matrix:
    """The edge's projection as a matrix (out, in) in Lava's flat layouts (integer in fixed
    point: an InputError if the graph is not quantized)."""
    m = chw_matrix(graph, pop, key, fixed_point, chunk_entries)
    if fixed_point:
        m = _integer(m, pop)
    return to_lava_matrix(m, pop.shape, graph[key].shape)


def _integer(m: sp.csr_matrix, pop: Node) -> sp.csr_matrix:
    _check_integer(m.data, pop)
    return m.astype(np.int64)


def _check_integer(values: np.ndarray, pop: Node) -> None:
    if not np.array_equal(values, np.round(values)):
        raise InputError(f"{pop.label()}: non-integer synapse weights; quantize the graph "
                         "(mtdeploy.passes.quantize) before lowering in fixed point")


def to_lava_matrix(m: sp.spmatrix, out_shape, in_shape) -> sp.csr_matrix:
    """A (out, in) matrix in IR (CHW) order -> Lava's flat layouts."""
    return sp.csr_matrix(m)[lava_order(out_shape)][:, lava_order(in_shape)].tocsr()


def chw_matrix(graph: Graph, pop: Node, key: str, fixed_point: bool,
               chunk_entries: int = 2 ** 22) -> sp.csr_matrix:
    """The edge's tree as a matrix (out, in) in IR (CHW) order, probed from the reference's
    integer tree (float tree, scaled, in floating point): :func:`~..forms.probed_matrix`."""
    tree, widest = _edge_tree(graph, pop, key, fixed_point)
    return probed_matrix(tree, graph[key].shape, pop.size, widest, chunk_entries)


def chw_blocks(graph: Graph, pop: Node, key: str, fixed_point: bool,
               chunk_entries: int = 2 ** 22):
    """:func:`chw_matrix`'s non-zeros a block at a time (:func:`~..forms.probed_blocks`)."""
    tree, widest = _edge_tree(graph, pop, key, fixed_point)
    return probed_blocks(tree, graph[key].shape, pop.size, widest, chunk_entries)


def _edge_tree(graph: Graph, pop: Node, key: str, fixed_point: bool):
    """(the edge's tree as a batch-first function of its input, its widest node's size)."""
    scale = 1.0 if fixed_point else edge_scale(graph, key, 1.0)

    def tree(x: torch.Tensor) -> torch.Tensor:
        if fixed_point:
            return tree_int_forward(graph, pop.name, {key: x})
        return tree_float_forward(graph, pop, {key: x}) * scale

    return tree, max([pop.size] + [n.size for n in tree_nodes(graph, pop)])


def weight_digits(m: sp.csr_matrix) -> list[tuple[int, sp.csr_matrix]]:
    """Balanced base-256 digits: m = sum_k d_k * 256**k, every d_k in [-128, 127]."""
    m = sp.csr_matrix(m, dtype=np.int64)
    m.sum_duplicates()
    digits = []
    for k, d in _digit_planes(m.data):
        dm = sp.csr_matrix((d, m.indices.copy(), m.indptr.copy()), shape=m.shape)
        dm.eliminate_zeros()
        digits.append((k, dm))
    return digits or [(0, m)]


def _digit_planes(values: np.ndarray):
    """(k, d_k) for each non-zero balanced base-256 digit plane of integer ``values``."""
    rest, k = np.asarray(values, np.int64), 0
    while np.any(rest):
        d = (rest + 128) % 256 - 128
        rest = (rest - d) // 256        # before the caller may reuse d's memory
        if np.any(d):
            yield k, d
        k += 1


@dataclass
class MatrixFigures:
    """What the lowering decides from an edge's integer matrix, known without building it:
    its non-zeros, largest |weight| and the non-zeros of each base-256 digit matrix."""

    nnz: int
    max_abs: float
    digits: list[tuple[int, int]]      # (k, non-zeros of digit matrix k), as weight_digits


def matrix_figures(values: np.ndarray, counts: np.ndarray) -> MatrixFigures:
    """Figures of a matrix holding ``values[i]`` ``counts[i]`` times (and zeros elsewhere)."""
    values, counts = np.asarray(values), np.asarray(counts, np.int64)
    keep = values != 0
    values, counts = values[keep], counts[keep]
    peak = float(np.abs(values).max(initial=0))
    nnz = int(counts.sum())
    if peak <= 127 or not np.array_equal(values, np.round(values)):
        return MatrixFigures(nnz, peak, [(0, nnz)])
    return MatrixFigures(nnz, peak,
                         [(k, int(counts[d != 0].sum())) for k, d in _digit_planes(values)])


# ---- an edge's matrix in the form that is cheapest to hold -----------------------------------
@dataclass
class WeightForm:
    """An edge whose tree is one weight matrix (after layout-only nodes, before gains)."""

    weight: np.ndarray          # (out, in), CHW order, integer

    def values_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return value_counts(self.weight)      # (a zero among them is no synapse: figures drop it)

    def matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix(self.weight)


class ProbedForm:
    """Any other edge: its matrix, probed from the tree (:func:`chw_matrix`) only when it is
    built. Its figures stream over the probe's blocks, so describing an edge (a VGG-16
    classifier with a pool folded in: 411M synapses) holds no matrix."""

    def __init__(self, m: sp.csr_matrix | None = None, *, graph: Graph | None = None,
                 pop: Node | None = None, key: str | None = None):
        self.m, self._source = m, (graph, pop, key)

    def values_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        if self.m is not None:
            return self.m.data, np.ones(len(self.m.data), np.int64)
        graph, pop, key = self._source
        tail = matrix_tail(graph, pop, key)
        if tail is not None:
            values, counts = tail.values_and_counts()
        else:
            values, counts = merged_counts(value_counts(v[v != 0]) for _, _, v in
                                           chw_blocks(graph, pop, key, True, 2 ** 24))
        _check_integer(values, pop)
        return values, counts

    def matrix(self) -> sp.csr_matrix:
        if self.m is None:
            graph, pop, key = self._source
            self.m = _integer(chw_matrix(graph, pop, key, True), pop)
        return self.m


def weight_form(graph: Graph, pop: Node, key: str) -> WeightForm | None:
    """The edge as ``gain * W`` of its one matrix node, when the tree is layout nodes, that
    node, then shape-keeping nodes (checked against the tree on random integers)."""
    path = edge_path(graph, pop, key)
    if not path:
        return None
    heads = [k for k, n in enumerate(path) if n.kind not in LAYOUT_KINDS]
    if not heads or path[heads[0]].kind not in MATRIX_PARAMS:
        return None
    node = path[heads[0]]
    if any(tuple(n.shape) != tuple(node.shape) for n in path[heads[0]:]):
        return None
    gain, prev = 1, key
    for n in path + [pop]:
        gain *= gain_on(n, prev)
        prev = n.name
    w = np.asarray(node.params[MATRIX_PARAMS[node.kind]], np.int64) * gain
    rng = np.random.default_rng(12345)
    x = rng.integers(-1023, 1024, (2, graph[key].size))
    want = tree_int_forward(graph, pop.name,
                            {key: torch.as_tensor(x, dtype=torch.float64)
                             .reshape(2, *graph[key].shape)})
    if w.shape != (pop.size, graph[key].size) or \
            not np.array_equal(want.reshape(2, -1).numpy(), x @ w.T):
        return None
    return WeightForm(w)


def edge_form(graph: Graph, pop: Node, key: str):
    """The edge's integer projection as a ConvForm (a local tree), a WeightForm (one matrix
    node) or, for anything else, the probed matrix: never a matrix where a kernel will do."""
    return composed_conv(graph, pop, key) or weight_form(graph, pop, key) \
        or ProbedForm(graph=graph, pop=pop, key=key)
