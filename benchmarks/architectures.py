"""The seed papers' architectures as QCFS torch models: VGG-16 and ResNet-18/20/34 (and MTT's
variants that squeeze the classifier's input instead of flattening it).

Rebuilt layer by layer with ``mtdeploy.nn.QCFS`` activations (MaxPool replaced by AvgPool, as
QCFS models are trained), in CIFAR (3x32x32) and ImageNet (3x224x224) layouts. Weights are
random (He init); ``randomize_bn`` gives every BatchNorm non-trivial inference statistics and
``calibrate`` sets each QCFS threshold to a high percentile of its input on sample data, which
is what a trained QCFS network's clip values look like.
"""
from __future__ import annotations

import torch
from torch import nn

from mtdeploy.nn import QCFS


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, padding: int | None = None):
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2 if padding is None else padding, bias=False),
            nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """conv-BN-QCFS-conv-BN + shortcut (identity, or 1x1 conv-BN when the shape changes) -> QCFS."""

    def __init__(self, c_in: int, c_out: int, stride: int, levels: int):
        super().__init__()
        self.residual_function = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), QCFS(levels, 4.0),
                                               *conv_bn(c_out, c_out, 3, 1))
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(*conv_bn(c_in, c_out, 1, stride, 0))
        self.act = QCFS(levels, 4.0)

    def forward(self, x):
        return self.act(self.residual_function(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], widths: list[int], imagenet: bool, levels: int = 8,
                 classes: int = 10):
        super().__init__()
        if imagenet:   # 7x7 stride-2 stem, then the stem pool (AvgPool for MaxPool)
            stem = [*conv_bn(3, widths[0], 7, 2, 3), QCFS(levels, 4.0), nn.AvgPool2d(2)]
        else:
            stem = [*conv_bn(3, widths[0], 3, 1), QCFS(levels, 4.0)]
        self.conv1 = nn.Sequential(*stem)
        layers, c = [], widths[0]
        for k, (n, w) in enumerate(zip(blocks, widths)):
            for b in range(n):
                layers.append(BasicBlock(c, w, 2 if (b == 0 and k > 0) else 1, levels))
                c = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.conv1(x))), 1))


def resnet18(imagenet: bool = False, levels: int = 8, classes: int = 10) -> ResNet:
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], imagenet, levels, classes)


def resnet34(imagenet: bool = False, levels: int = 8, classes: int = 10) -> ResNet:
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], imagenet, levels, classes)


def resnet20(levels: int = 8, classes: int = 10) -> ResNet:
    return ResNet([3, 3, 3], [16, 32, 64], False, levels, classes)


VGG16_CFG = [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"]


def vgg16(imagenet: bool = False, levels: int = 8, classes: int = 10) -> nn.Sequential:
    layers, c = [], 3
    for v in VGG16_CFG:
        if v == "P":
            layers.append(nn.AvgPool2d(2))
        else:
            layers += [*conv_bn(c, v), QCFS(levels, 4.0)]
            c = v
    side = 7 if imagenet else 1
    hidden = 4096 if imagenet else 512
    layers += [nn.Flatten(), nn.Linear(c * side * side, hidden), QCFS(levels, 4.0),
               nn.Linear(hidden, hidden), QCFS(levels, 4.0), nn.Linear(hidden, classes)]
    return nn.Sequential(*layers)


class SqueezeResNet(ResNet):
    """MTT's ResNet head: the global pool's (C, 1, 1) map squeezed, not flattened, before the
    classifier (``x.squeeze()``: a pure flatten, which mtdeploy accepts)."""

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.conv1(x))).squeeze())


def resnet18_squeeze(imagenet: bool = False, levels: int = 8, classes: int = 10) -> ResNet:
    return SqueezeResNet([2, 2, 2, 2], [64, 128, 256, 512], imagenet, levels, classes)


class SqueezeVGG(nn.Module):
    """MTT's VGG-16 (CIFAR layout): the features end in a (512, 1, 1) map, squeezed with
    ``x.squeeze(-1).squeeze(-1)`` before the classifier."""

    def __init__(self, levels: int = 8, classes: int = 10):
        super().__init__()
        layers = list(vgg16(False, levels, classes))
        cut = next(i for i, m in enumerate(layers) if isinstance(m, nn.Flatten))
        self.features = nn.Sequential(*layers[:cut])
        self.classifier = nn.Sequential(*layers[cut + 1:])

    def forward(self, x):
        return self.classifier(self.features(x).squeeze(-1).squeeze(-1))


def vgg16_squeeze(levels: int = 8, classes: int = 10) -> SqueezeVGG:
    return SqueezeVGG(levels, classes)


def cnn28(levels: int = 8, classes: int = 10) -> nn.Sequential:
    """Issue 15's benchmark CNN for 1x28x28 inputs: three 3x3 convs (32, 64, 64 channels; the
    first two followed by 2x2 average pooling) and two linear layers (128 hidden, 10 out)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), QCFS(levels, 4.0), nn.AvgPool2d(2),     # 32x14x14
        nn.Conv2d(32, 64, 3, padding=1), QCFS(levels, 4.0), nn.AvgPool2d(2),    # 64x7x7
        nn.Conv2d(64, 64, 3, padding=1), QCFS(levels, 4.0),                     # 64x7x7
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), QCFS(levels, 4.0),
        nn.Linear(128, classes))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) * 0.8 + 0.6)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model.eval()


class _Reached(Exception):
    """Ends a calibration forward pass at the layer being calibrated."""


def calibrate(model: nn.Module, x: torch.Tensor, percentile: float = 0.999) -> nn.Module:
    """Set each QCFS threshold to ``percentile`` of its positive inputs on ``x`` (in order, so
    each layer is calibrated on the already-calibrated layers before it)."""
    acts = [m for m in model.modules() if isinstance(m, QCFS)]

    def stop(mod, inp):        # the forward is needed only up to this layer's input
        seen.append(inp[0].detach())
        raise _Reached

    for act in acts:
        seen: list[torch.Tensor] = []
        hook = act.register_forward_pre_hook(stop)
        try:
            with torch.no_grad():
                model(x)
        except _Reached:
            pass
        finally:
            hook.remove()
        values = seen[0].flatten()
        values = values[values > 0]
        if values.numel():
            k = max(1, int(percentile * values.numel()))
            act.threshold.data.fill_(float(values.kthvalue(k).values))
    return model.eval()
