"""QCFS networks built directly as IR graphs, for property tests and benchmarks.

:class:`GraphBuilder` adds one node at a time (conv, linear, qcfs, average pooling, flatten,
add) and infers each node's shape from its kind as it goes. Weights, levels and thresholds come
from a numpy Generator, so hypothesis can drive them through a seed and every backend can be
checked against the same oracle; ``benchmarks/synthetic.py`` builds VGG and ResNet with it.
"""
from __future__ import annotations

import numpy as np

from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of

LEVEL_CHOICES = (1, 2, 4, 8, 16)

#: weight initialisations: ``random`` draws N(0, 1.5/sqrt(fan_in)) weights and N(0, 0.1) biases
#: (networks whose layers all fire, for property tests); ``he`` draws He-normal weights in
#: float32 and zero biases (synthetic deep networks, where only shapes and sparsity matter)
INITS = ("random", "he")


class GraphBuilder:
    """A QCFS IR graph built node by node.

    Every method appends one node reading ``src`` (default: the node added last), names it
    ``name`` (default: a prefix and the node count, e.g. ``conv3``) and returns its name.
    ``rng`` is a Generator or a seed. ``levels`` / ``threshold``: what :meth:`qcfs` uses when
    not given one (None: drawn from :data:`LEVEL_CHOICES` / uniform on [0.5, 2)).
    """

    def __init__(self, name: str, input_shape, rng: np.random.Generator | int | None = None, *,
                 init: str = "random", levels: int | None = None, threshold: float | None = None,
                 input_name: str = "x"):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.g = Graph(name)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.init = init
        self.levels = levels
        self.threshold = threshold
        self.last = self.g.add(Node(input_name, "input", [], {"shape": list(input_shape)},
                                    shape=tuple(input_shape))).name

    # ---- internals ------------------------------------------------------------------------
    def _add(self, node: Node) -> str:
        self.g.add(node)
        node.shape = tuple(int(s) for s in kind_of(node).infer_shape(
            node, [self.g[i].shape for i in node.inputs]))
        self.last = node.name
        return node.name

    def _name(self, name: str | None, prefix: str) -> str:
        return name or f"{prefix}{len(self.g)}"

    def _weights(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        fan_in = int(np.prod(shape[1:]))
        if self.init == "he":
            w = self.rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2 / fan_in)
            return {"weight": w, "bias": np.zeros(shape[0], np.float32)}
        w = self.rng.normal(0, 1.5 / np.sqrt(fan_in), shape).astype(np.float32)
        b = self.rng.normal(0, 0.1, shape[0]).astype(np.float32)
        return {"weight": w, "bias": b}

    # ---- layers ---------------------------------------------------------------------------
    def conv(self, out: int, k: int = 3, stride: int = 1, padding: int = 1,
             src: str | None = None, name: str | None = None) -> str:
        """A k x k 2-D convolution (no dilation, no groups)."""
        src = src or self.last
        c = self.g[src].shape[0]
        attrs = {"stride": [stride, stride], "padding": [padding, padding], "dilation": [1, 1],
                 "groups": 1, "in_channels": c, "out_channels": out, "kernel": [k, k]}
        return self._add(Node(self._name(name, "conv"), "conv", [src], attrs,
                              self._weights((out, c, k, k))))

    def linear(self, out: int, src: str | None = None, name: str | None = None) -> str:
        src = src or self.last
        i = self.g[src].shape[0]
        return self._add(Node(self._name(name, "fc"), "linear", [src],
                              {"in_features": i, "out_features": out}, self._weights((out, i))))

    def qcfs(self, levels: int | None = None, threshold: float | None = None,
             src: str | None = None, name: str | None = None) -> str:
        """A QCFS activation: ``levels`` / ``threshold`` as given, else the builder's, else
        drawn (levels first, then the threshold)."""
        src = src or self.last
        levels = levels or self.levels or int(self.rng.choice(LEVEL_CHOICES))
        threshold = threshold if threshold is not None else self.threshold
        if threshold is None:
            threshold = float(self.rng.uniform(0.5, 2.0))
        return self._add(Node(self._name(name, "act"), "qcfs", [src], {"levels": int(levels)},
                              {"threshold": np.asarray(threshold, np.float32)}))

    def pool(self, k: int = 2, stride: int | None = None, padding: int = 0,
             global_: bool = False, src: str | None = None, name: str | None = None) -> str:
        """2-D average pooling (stride defaults to k); ``global_``: over the whole map."""
        src = src or self.last
        attrs = {"global": global_, "kernel": None if global_ else [k, k],
                 "stride": None if global_ else [stride or k] * 2, "padding": [padding] * 2,
                 "count_include_pad": True}
        return self._add(Node(self._name(name, "pool"), "avgpool", [src], attrs))

    def flatten(self, src: str | None = None, name: str | None = None) -> str:
        return self._add(Node(self._name(name, "flat"), "flatten", [src or self.last]))

    def add(self, *srcs: str, name: str | None = None) -> str:
        """Element-wise sum of ``srcs`` (a residual connection)."""
        return self._add(Node(self._name(name, "add"), "add", list(srcs)))

    def done(self, out: str | None = None) -> Graph:
        """The graph, its output ``out`` (default: the node added last), validated."""
        self.g.output = out or self.last
        self.g.validate()
        return self.g


def random_mlp(rng: np.random.Generator, n_in: int = 12, hidden=(10, 8), classes: int = 5,
               levels=None) -> Graph:
    b = GraphBuilder("mlp", (n_in,), rng)
    for k, h in enumerate(hidden):
        b.linear(h)
        b.qcfs(levels[k] if levels else None)
    b.linear(classes)
    return b.done()


def random_cnn(rng: np.random.Generator, size: int = 6, channels=(3, 4), classes: int = 4,
               levels=None) -> Graph:
    b = GraphBuilder("cnn", (1, size, size), rng)
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
    b = GraphBuilder("residual", (1, size, size), rng)
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
