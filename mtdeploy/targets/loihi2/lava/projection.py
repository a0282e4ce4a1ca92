"""An edge's projection (the tree of linear nodes between a producer and a population), as the
nodes it passes through and as a matrix in Lava's flat layouts.

The matrix is materialised by pushing basis vectors through the tree, in fixed point through the
reference simulator's integer tree (docs/semantics.md §3), so Lava's synapses compute exactly
what the reference computes.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import incoming_edges, is_alignment, tree_nodes
from mtdeploy.kinds.align import edge_scale
from mtdeploy.sim.reference import tree_int_forward
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
    """The edge's projection as a matrix (out, in) in Lava's flat layouts, built in chunks of
    basis vectors (integer in fixed point: an InputError if the graph is not quantized)."""
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
            y = tree_int_forward(graph, pop.name, {key: basis})
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
