"""The ANN view of an IR graph: each node's float ``forward``, in topological order."""
from __future__ import annotations

import torch

from mtdeploy.ir.graph import Graph
from mtdeploy.kinds import kind_of


def ann_forward(graph: Graph, x, return_all: bool = False):
    """Evaluate the graph as the QCFS ANN (float64). Align and readout nodes are
    identities in this view (their kinds' ``forward``)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    values = {}
    with torch.no_grad():
        for node in graph:
            if kind_of(node).role == "source":
                values[node.name] = x
            else:
                values[node.name] = kind_of(node).forward(node, *[values[i] for i in node.inputs])
    return values if return_all else values[graph.output]
