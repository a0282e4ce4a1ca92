"""Calibration-based bias correction: each neuron's bias absorbs the mean current that rounding
its weights costs it on sample inputs (docs/semantics.md §3, "Bias correction").

Rounding a channel's weights leaves an error ``dW`` whose current ``dW . x`` has a non-zero
mean wherever the inputs do (QCFS outputs are never negative, images rarely centred): on the
random mixed-level CNNs of ``benchmarks/bench_quantization.py`` that mean is most of the
error. Its expectation over calibration samples is a per-neuron constant, so the integer bias
cancels it exactly as far as the samples represent the data; only the zero-mean part of the
rounding noise is left. The correction is measured on the float ANN's activations (what every
layer should receive), one batch of samples at a time, keeping only the activations that a
later node or correction still reads.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import is_population, populations, tree_nodes
from mtdeploy.kinds.neurons import units_of

#: activations one batch may hold (float32 elements), which sizes the batches
BATCH_ELEMENTS = 2 ** 25
#: node outputs evaluated over all samples: a VGG-16 at 224x224 (43M per sample) takes 25
#: samples (tens of seconds on 2 cores), a small CNN every sample offered
WORK_ELEMENTS = 2 ** 30
MIN_SAMPLES = 16
#: calibration samples the correction uses at most
CALIB_SAMPLES = 512


def correct_biases(graph: Graph, calib) -> int:
    """Add to every population's ``bias_int`` the mean, over the first samples of ``calib``,
    of the current its weights' rounding loses, in its integer units; -> how many samples:
    at most :data:`CALIB_SAMPLES`, and no more than :data:`WORK_ELEMENTS` of node outputs
    allow (at least :data:`MIN_SAMPLES`). A population whose error path holds a non-linear
    node (a max pool after the weights) is left as it is."""
    per_sample = max(1, sum(n.size for n in graph))
    x = np.asarray(calib)[:min(CALIB_SAMPLES, max(MIN_SAMPLES, WORK_ELEMENTS // per_sample))]
    pops = [p for p in populations(graph) if p.inputs]
    trees = {p.name: tree_nodes(graph, p) for p in pops}
    last_use = _last_uses(graph, trees)
    largest = max((n.size for n in graph), default=1)
    batch = int(np.clip(BATCH_ELEMENTS // max(1, largest), 1, len(x)))
    sums: dict[str, torch.Tensor] = {}
    from mtdeploy.search.progress import Progress   # (search imports passes)

    with torch.no_grad(), Progress(None) as progress:
        for start in progress.track(range(0, len(x), batch), "bias correction"):
            chunk = torch.as_tensor(x[start:start + batch], dtype=torch.float32)
            for name, err in _batch_errors(graph, chunk, trees, last_use):
                total = err.sum(0)
                sums[name] = total if name not in sums else sums[name] + total
    for pop in pops:
        if pop.name in sums:
            mean = sums[pop.name].double().numpy() / len(x)
            pop.params["bias_int"] = (np.asarray(pop.params["bias_int"], np.int64)
                                      + np.rint(mean / units_of(pop)).astype(np.int64))
    return len(x)


def _last_uses(graph: Graph, trees: dict[str, list[Node]]) -> dict[str, int]:
    """Per node, the position of the last node that reads its value: a consumer, or the
    population whose correction reads the inputs of its tree's weighted ops."""
    order = {n.name: k for k, n in enumerate(graph)}
    last = {n.name: order[n.name] for n in graph}
    for node in graph:
        for i in node.inputs:
            last[i] = max(last[i], order[node.name])
    for pop_name, tree in trees.items():
        for node in tree:
            if kind_of(node).weighted:
                for i in node.inputs:
                    last[i] = max(last[i], order[pop_name])
    return last


def _batch_errors(graph: Graph, x: torch.Tensor, trees, last_use):
    """The float ANN on one batch, node by node; at each population, its rounding error."""
    values: dict[str, torch.Tensor] = {}
    for k, node in enumerate(graph):
        kind = kind_of(node)
        values[node.name] = x if kind.role == "source" else \
            kind.forward(node, *[values[i] for i in node.inputs])
        if is_population(node) and node.name in trees:
            err = _rounding_error(graph, node, trees[node.name], values)
            if err is not None:
                yield node.name, err
        for i in [*node.inputs, node.name]:
            if last_use[i] <= k:
                values.pop(i, None)


def _rounding_error(graph: Graph, pop: Node, tree: list[Node], values) -> torch.Tensor | None:
    """``pop``'s float input current with the rounded weights minus the exact one, negated
    (what the bias must add back); None where a non-linear node lies on the error's path. A
    path without weights (an identity shortcut) adds no error: zeros of its shape."""
    err: dict[str, torch.Tensor] = {}
    for node in tree:
        kind = kind_of(node)
        if kind.weighted and "weight_int" in node.params:
            err[node.name] = kind.forward(_rounding_residual(node), values[node.inputs[0]])
        elif any(i in err for i in node.inputs):
            if not kind.linear_map:
                return None
            like = next(err[i] for i in node.inputs if i in err)
            err[node.name] = kind.forward(node, *[
                err[i] if i in err else like.new_zeros((len(like), *graph[i].shape))
                for i in node.inputs])
    return err.get(pop.inputs[0])


def _rounding_residual(node: Node) -> Node:
    """A copy of the weighted ``node`` whose weights are what rounding took off (W - W_int /
    scale) and whose bias is zero."""
    weight = np.asarray(node.params["weight"], np.float64)
    scale = np.asarray(node.params.get("weight_scale", node.attrs["weight_scale"]), np.float64)
    scale = scale.reshape(-1, *[1] * (weight.ndim - 1)) if scale.ndim else scale
    residual = copy.copy(node)
    residual.params = {"weight": (weight - node.params["weight_int"] / scale).astype(np.float32),
                       "bias": np.zeros(weight.shape[0], np.float32)}
    return residual
