"""The ANN view of an IR graph: each node's float ``forward``, in topological order."""
from __future__ import annotations

import torch

from mtdeploy.ir.graph import Graph
from mtdeploy.ir.kinds import kind_of


def ann_forward(graph: Graph, x, return_all: bool = False):
    """Evaluate the graph as the QCFS ANN (float64). Align/readout nodes are identities here."""
    x = torch.as_tensor(x, dtype=torch.float64)
    values = {}
    with torch.no_grad():
        for node in graph:
            if kind_of(node).role == "source":
                values[node.name] = x
            elif node.kind == "readout":
                values[node.name] = values[node.inputs[0]]
            else:
                values[node.name] = kind_of(node).forward(node, *[values[i] for i in node.inputs])
    return values if return_all else values[graph.output]
