"""Synthetic-weight QCFS networks built directly as IR graphs (no torch front end needed).

VGG-16 and ResNet-18 on CIFAR shapes (3x32x32) and ResNet-34 on ImageNet shapes (3x224x224), in
the QCFS style: BatchNorm already folded into the convs, AvgPool instead of MaxPool, a QCFS
activation (``levels``) after every hidden conv/linear, the last linear read out. Weights are
seeded random (the budget depends on shapes and non-zero structure, not on values).
"""
from __future__ import annotations

import numpy as np

from mtdeploy.ir.graph import Graph, Node


class _Builder:
    def __init__(self, name: str, input_shape, levels: int, seed: int):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.levels = levels
        self.g.add(Node("input", "input", attrs={"shape": list(input_shape)}, shape=tuple(input_shape)))
        self.shapes = {"input": tuple(input_shape)}

    def _add(self, node: Node) -> str:
        self.g.add(node)
        from mtdeploy.kinds import kind_of

        node.shape = tuple(int(s) for s in kind_of(node).infer_shape(
            node, [self.g[i].shape for i in node.inputs]))
        return node.name

    def conv(self, name, x, c_out, k=3, stride=1, padding=1) -> str:
        c_in = self.g[x].shape[0]
        w = self.rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * np.sqrt(2 / (c_in * k * k))
        return self._add(Node(name, "conv", [x], {"stride": [stride] * 2, "padding": [padding] * 2,
                                                   "dilation": [1, 1], "groups": 1, "in_channels": c_in,
                                                   "out_channels": c_out, "kernel": [k, k]},
                              {"weight": w, "bias": np.zeros(c_out, np.float32)}))

    def linear(self, name, x, n_out) -> str:
        n_in = self.g[x].shape[0]
        w = self.rng.standard_normal((n_out, n_in), dtype=np.float32) * np.sqrt(2 / n_in)
        return self._add(Node(name, "linear", [x], {"in_features": n_in, "out_features": n_out},
                              {"weight": w, "bias": np.zeros(n_out, np.float32)}))

    def qcfs(self, name, x) -> str:
        return self._add(Node(name, "qcfs", [x], {"levels": self.levels},
                              {"threshold": np.asarray(4.0, np.float32)}))

    def pool(self, name, x, k=2, stride=None, padding=0, global_=False) -> str:
        attrs = {"global": global_, "kernel": None if global_ else [k, k],
                 "stride": None if global_ else [stride or k] * 2, "padding": [padding] * 2,
                 "count_include_pad": True}
        return self._add(Node(name, "avgpool", [x], attrs))

    def flatten(self, name, x) -> str:
        return self._add(Node(name, "flatten", [x]))

    def add(self, name, *xs) -> str:
        return self._add(Node(name, "add", list(xs)))

    def done(self, out: str) -> Graph:
        self.g.output = out
        self.g.validate()
        return self.g


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(levels: int = 4, num_classes: int = 10, seed: int = 0) -> Graph:
    """QCFS VGG-16 for CIFAR (the QCFS paper's classifier: 512-4096-4096-classes)."""
    b = _Builder("vgg16_cifar", (3, 32, 32), levels, seed)
    x, i, p = "input", 0, 0
    for v in VGG16_CFG:
        if v == "M":
            p += 1
            x = b.pool(f"features.pool{p}", x)
        else:
            i += 1
            x = b.qcfs(f"features.act{i}", b.conv(f"features.conv{i}", x, v))
    x = b.flatten("flatten", x)
    x = b.qcfs("classifier.act1", b.linear("classifier.fc1", x, 4096))
    x = b.qcfs("classifier.act2", b.linear("classifier.fc2", x, 4096))
    return b.done(b.linear("classifier.fc3", x, num_classes))


def _resnet(name, input_shape, blocks, levels, num_classes, seed, imagenet) -> Graph:
    b = _Builder(name, input_shape, levels, seed)
    if imagenet:
        x = b.qcfs("stem.act", b.conv("stem.conv", "input", 64, k=7, stride=2, padding=3))
        x = b.pool("stem.pool", x, k=3, stride=2, padding=1)
    else:
        x = b.qcfs("stem.act", b.conv("stem.conv", "input", 64))
    channels = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for j in range(n):
            stride = 2 if (stage > 1 and j == 0) else 1
            pre = f"layer{stage}.{j}"
            h = b.qcfs(f"{pre}.act1", b.conv(f"{pre}.conv1", x, width, stride=stride))
            h = b.conv(f"{pre}.conv2", h, width)
            short = x
            if stride != 1 or channels != width:
                short = b.conv(f"{pre}.downsample", x, width, k=1, stride=stride, padding=0)
            x = b.qcfs(f"{pre}.act2", b.add(f"{pre}.add", h, short))
            channels = width
    x = b.flatten("flatten", b.pool("avgpool", x, global_=True))
    return b.done(b.linear("fc", x, num_classes))


def resnet18(levels: int = 4, num_classes: int = 10, seed: int = 0) -> Graph:
    """QCFS ResNet-18 for CIFAR (3x3 stem, no stem pooling)."""
    return _resnet("resnet18_cifar", (3, 32, 32), (2, 2, 2, 2), levels, num_classes, seed, False)


def resnet34(levels: int = 4, num_classes: int = 1000, seed: int = 0) -> Graph:
    """QCFS ResNet-34 for ImageNet (7x7/2 stem, 3x3/2 average pool)."""
    return _resnet("resnet34_imagenet", (3, 224, 224), (3, 4, 6, 3), levels, num_classes, seed, True)


NETWORKS = {"vgg16_cifar": vgg16, "resnet18_cifar": resnet18, "resnet34_imagenet": resnet34}
