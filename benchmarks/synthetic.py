"""Synthetic-weight QCFS networks built directly as IR graphs (no torch front end needed).

VGG-16 and ResNet-18 on CIFAR shapes (3x32x32) and ResNet-34 on ImageNet shapes (3x224x224), in
the QCFS style: BatchNorm already folded into the convs, AvgPool instead of MaxPool, a QCFS
activation (``levels``) after every hidden conv/linear, the last linear read out. Weights are
seeded random (the budget depends on shapes and non-zero structure, not on values).
"""
from __future__ import annotations

from mtdeploy.ir.graph import Graph
from mtdeploy.testing import GraphBuilder

THRESHOLD = 4.0


def _builder(name: str, input_shape, levels: int, seed: int) -> GraphBuilder:
    return GraphBuilder(name, input_shape, seed, init="he", levels=levels, threshold=THRESHOLD,
                        input_name="input")


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(levels: int = 4, num_classes: int = 10, seed: int = 0) -> Graph:
    """QCFS VGG-16 for CIFAR (the QCFS paper's classifier: 512-4096-4096-classes)."""
    b = _builder("vgg16_cifar", (3, 32, 32), levels, seed)
    i, p = 0, 0
    for v in VGG16_CFG:
        if v == "M":
            p += 1
            b.pool(name=f"features.pool{p}")
        else:
            i += 1
            b.conv(v, name=f"features.conv{i}")
            b.qcfs(name=f"features.act{i}")
    b.flatten(name="flatten")
    for j, width in enumerate((4096, 4096), start=1):
        b.linear(width, name=f"classifier.fc{j}")
        b.qcfs(name=f"classifier.act{j}")
    return b.done(b.linear(num_classes, name="classifier.fc3"))


def _resnet(name, input_shape, blocks, levels, num_classes, seed, imagenet) -> Graph:
    b = _builder(name, input_shape, levels, seed)
    if imagenet:
        b.conv(64, k=7, stride=2, padding=3, name="stem.conv")
        b.qcfs(name="stem.act")
        x = b.pool(k=3, stride=2, padding=1, name="stem.pool")
    else:
        b.conv(64, name="stem.conv")
        x = b.qcfs(name="stem.act")
    channels = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for j in range(n):
            stride = 2 if (stage > 1 and j == 0) else 1
            pre = f"layer{stage}.{j}"
            b.conv(width, stride=stride, src=x, name=f"{pre}.conv1")
            b.qcfs(name=f"{pre}.act1")
            h = b.conv(width, name=f"{pre}.conv2")
            short = x
            if stride != 1 or channels != width:
                short = b.conv(width, k=1, stride=stride, padding=0, src=x,
                               name=f"{pre}.downsample")
            b.add(h, short, name=f"{pre}.add")
            x = b.qcfs(name=f"{pre}.act2")
            channels = width
    b.pool(global_=True, name="avgpool")
    b.flatten(name="flatten")
    return b.done(b.linear(num_classes, name="fc"))


def resnet18(levels: int = 4, num_classes: int = 10, seed: int = 0) -> Graph:
    """QCFS ResNet-18 for CIFAR (3x3 stem, no stem pooling)."""
    return _resnet("resnet18_cifar", (3, 32, 32), (2, 2, 2, 2), levels, num_classes, seed, False)


def resnet34(levels: int = 4, num_classes: int = 1000, seed: int = 0) -> Graph:
    """QCFS ResNet-34 for ImageNet (7x7/2 stem, 3x3/2 average pool)."""
    return _resnet("resnet34_imagenet", (3, 224, 224), (3, 4, 6, 3), levels, num_classes, seed, True)


NETWORKS = {"vgg16_cifar": vgg16, "resnet18_cifar": resnet18, "resnet34_imagenet": resnet34}
