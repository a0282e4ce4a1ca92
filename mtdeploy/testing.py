"""Random QCFS networks as IR graphs, for property tests of every backend.

Shapes, levels and thresholds are drawn from a numpy Generator, so hypothesis can drive them
through a seed and every backend can be checked against the same oracle.
"""
from __future__ import annotations

import numpy as np

from mtdeploy.ir.graph import Graph, Node

LEVEL_CHOICES = (1, 2, 4, 8, 16)


class _Builder:
    def __init__(self, name: str, rng: np.random.Generator, input_shape):
        self.g = Graph(name)
        self.rng = rng
        self.last = self.g.add(Node("x", "input", [], {"shape": list(input_shape)},
                                    shape=tuple(input_shape))).name

    def _add(self, node: Node) -> str:
        self.g.add(node)
        self.g.infer_shapes()
        self.last = node.name
        return node.name

    def linear(self, out: int, src: str | None = None) -> str:
        src = src or self.last
        i = self.g[src].shape[0]
        w = self.rng.normal(0, 1.5 / np.sqrt(i), (out, i)).astype(np.float32)
        b = self.rng.normal(0, 0.1, out).astype(np.float32)
        return self._add(Node(f"fc{len(self.g)}", "linear", [src],
                              {"in_features": i, "out_features": out}, {"weight": w, "bias": b}))

    def conv(self, out: int, k: int = 3, stride: int = 1, pad: int = 1, src: str | None = None) -> str:
        src = src or self.last
        c = self.g[src].shape[0]
        w = self.rng.normal(0, 1.5 / np.sqrt(c * k * k), (out, c, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, out).astype(np.float32)
        attrs = {"stride": [stride, stride], "padding": [pad, pad], "dilation": [1, 1], "groups": 1,
                 "in_channels": c, "out_channels": out, "kernel": [k, k]}
        return self._add(Node(f"conv{len(self.g)}", "conv", [src], attrs, {"weight": w, "bias": b}))

    def qcfs(self, levels: int | None = None, src: str | None = None) -> str:
        src = src or self.last
        levels = levels or int(self.rng.choice(LEVEL_CHOICES))
        th = float(self.rng.uniform(0.5, 2.0))
        return self._add(Node(f"act{len(self.g)}", "qcfs", [src], {"levels": levels},
                              {"threshold": np.asarray(th, np.float32)}))

    def pool(self, k: int = 2) -> str:
        return self._add(Node(f"pool{len(self.g)}", "avgpool", [self.last],
                              {"global": False, "kernel": [k, k], "stride": [k, k],
                               "padding": [0, 0], "count_include_pad": True}))

    def flatten(self) -> str:
        return self._add(Node(f"flat{len(self.g)}", "flatten", [self.last]))

    def add(self, a: str, b: str) -> str:
        return self._add(Node(f"add{len(self.g)}", "add", [a, b]))

    def done(self) -> Graph:
        self.g.output = self.last
        return self.g


def random_mlp(rng: np.random.Generator, n_in: int = 12, hidden=(10, 8), classes: int = 5,
               levels=None) -> Graph:
    b = _Builder("mlp", rng, (n_in,))
    for k, h in enumerate(hidden):
        b.linear(h)
        b.qcfs(levels[k] if levels else None)
    b.linear(classes)
    return b.done()


def random_cnn(rng: np.random.Generator, size: int = 6, channels=(3, 4), classes: int = 4,
               levels=None) -> Graph:
    b = _Builder("cnn", rng, (1, size, size))
    for k, c in enumerate(channels):
        b.conv(c)
        b.qcfs(levels[k] if levels else None)
    b.pool(2)
    b.flatten()
    b.linear(classes)
    return b.done()


def random_residual(rng: np.random.Generator, size: int = 6, channels: int = 3, classes: int = 4,
                    levels=None) -> Graph:
    """stem conv -> QCFS -> [conv -> QCFS -> conv] + skip -> QCFS -> pool -> linear."""
    lv = list(levels) if levels else [None] * 3
    b = _Builder("residual", rng, (1, size, size))
    b.conv(channels)
    skip = b.qcfs(lv[0])
    b.conv(channels)
    b.qcfs(lv[1])
    main = b.conv(channels)
    b.add(main, skip)
    b.qcfs(lv[2])
    b.pool(2)
    b.flatten()
    b.linear(classes)
    return b.done()
