"""Train a small residual QCFS network on scikit-learn's 8x8 digits and save it for mtdeploy.

    python examples/residual/train.py          # writes model.pt, digits_test.npz, digits_calib.npz

Two residual blocks: one with an identity skip, one that halves the resolution and uses a 1x1
stride-2 conv (with BN) on the skip path. Every QCFS layer has its own levels (mixed timesteps).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from mtdeploy.nn import QCFS

HERE = Path(__file__).resolve().parent
DEFAULT_LEVELS = "8,4,4,2,4"


def _load_common():
    """examples/common.py by path: the examples are scripts, not an installed package."""
    name = "mtdeploy_examples_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                                   bias=False),
                         nn.BatchNorm2d(c_out))


class ResidualBlock(nn.Module):
    """conv-BN-QCFS -> conv-BN, plus the skip (identity, or 1x1 conv-BN when the shape changes),
    then QCFS on the sum: the add sits between synapse layers and the next spiking population."""

    def __init__(self, c_in: int, c_out: int, stride: int, mid_levels: int, out_levels: int,
                 threshold: float = 2.0):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.act1 = QCFS(mid_levels, threshold)
        self.conv2 = conv_bn(c_out, c_out, 3)
        self.downsample = (conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out
                           else nn.Identity())
        self.act2 = QCFS(out_levels, threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))) + self.downsample(x))


class ResidualNet(nn.Module):
    def __init__(self, levels: list[int], width: int = 16, threshold: float = 2.0):
        super().__init__()
        stem, b1_mid, b1_out, b2_mid, b2_out = levels
        self.stem = nn.Sequential(*conv_bn(1, width), QCFS(stem, threshold))        # 16x8x8
        self.block1 = ResidualBlock(width, width, 1, b1_mid, b1_out, threshold)      # 16x8x8
        self.block2 = ResidualBlock(width, 2 * width, 2, b2_mid, b2_out, threshold)  # 32x4x4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def main(argv=None) -> dict:
    """Train, report, save; returns the test accuracy, training time and written paths."""
    return _load_common().run_example(
        argv, description=__doc__.splitlines()[0], default_out=HERE, build_model=ResidualNet,
        n_levels=5, default_levels=DEFAULT_LEVELS,
        levels_help="stem, block1 mid, block1 out, block2 mid, block2 out", label="digits (residual)")


if __name__ == "__main__":
    main()
