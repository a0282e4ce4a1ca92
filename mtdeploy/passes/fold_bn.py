"""Fold inference-mode BatchNorm into the conv/linear layer that feeds it.

A spiking network has no place for a per-channel affine map between a synapse layer and its
neurons, but BN directly after a weighted layer is one: ``gamma*(W x + b - mean)/sqrt(var+eps)
+ beta`` is the layer ``W' x + b'`` with ``W' = W*s`` and ``b' = (b - mean)*s + beta``,
``s = gamma/sqrt(var+eps)`` per output channel. Computed in float64, stored as float32.
"""
from __future__ import annotations

import numpy as np

from mtdeploy.errors import UnsupportedOpsError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of

_HINT_PLACE = ("put each BatchNorm directly after a Conv2d/Linear (before the QCFS activation): "
               "mtdeploy folds it into that layer's weights")


def fold_batchnorm(graph: Graph) -> Graph:
    """Return a copy of ``graph`` with every batchnorm folded into its producing weighted layer.

    Raises ``UnsupportedOpsError`` (an ``InputError``) listing every batchnorm that cannot fold:
    one that follows a non-weighted node (add, pool, activation, input), or whose producer also
    feeds other nodes (folding would change what those see).
    """
    g = graph.copy()
    problems: list[tuple[str, str, str]] = []
    folds: list[tuple[Node, Node]] = []
    for bn in g.of_kind("batchnorm"):
        producer = g[bn.inputs[0]]
        reason = _why_not_foldable(g, bn, producer)
        if reason:
            problems.append((bn.origin or bn.name, f"BatchNorm {reason}", _HINT_PLACE))
        else:
            folds.append((bn, producer))
    if problems:
        raise UnsupportedOpsError(problems)
    for bn, producer in folds:
        _fold_into(producer, bn)
        g.remove(bn.name)
        g.meta.setdefault("folded_batchnorm", {})[bn.name] = producer.name
    return g


def _why_not_foldable(g: Graph, bn: Node, producer: Node) -> str | None:
    if not kind_of(producer).weighted or "weight" not in producer.params:
        return f"after {producer.label()}, not after a Conv2d/Linear"
    channels = np.asarray(bn.params["running_mean"]).shape[0]
    out_channels = producer.params["weight"].shape[0]
    if channels != out_channels:
        return (f"normalises {channels} channels but {producer.label()} produces "
                f"{out_channels}")
    others = [c.name for c in g.consumers(producer.name) if c.name != bn.name]
    if others or g.output == producer.name:
        feeds = ", ".join(others) if others else "the graph output"
        return (f"cannot fold into {producer.label()}: that layer also feeds {feeds} "
                f"without the normalisation")
    return None


def _fold_into(layer: Node, bn: Node) -> None:
    p = bn.params
    scale = (np.asarray(p["weight"], np.float64)
             / np.sqrt(np.asarray(p["running_var"], np.float64) + float(bn.attrs["eps"])))
    weight = np.asarray(layer.params["weight"], np.float64)
    bias = np.asarray(layer.params.get("bias", np.zeros(weight.shape[0])), np.float64)
    per_channel = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    layer.params["weight"] = (weight * per_channel).astype(np.float32)
    layer.params["bias"] = ((bias - np.asarray(p["running_mean"], np.float64)) * scale
                            + np.asarray(p["bias"], np.float64)).astype(np.float32)
