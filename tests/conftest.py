"""Shared fixtures: small QCFS torch models (MLP, CNN, residual) with non-trivial BN statistics.

Each builder is seeded and takes well under a second to build, so tests can afford to make many.
Every BatchNorm gets random running statistics and affine parameters (a freshly initialised BN
is the identity, which would let a broken BN fold pass unnoticed).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mtdeploy.nn import QCFS


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model for a few seconds")


@dataclass
class TorchCase:
    model: nn.Module          # eval mode
    input_shape: tuple[int, ...]

    def batch(self, n: int = 8, seed: int = 0) -> torch.Tensor:
        """Inputs in the range a QCFS network sees (mostly [0, 1], some outside)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.rand((n, *self.input_shape), generator=gen) * 1.5 - 0.25


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running stats and affine parameters (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return model


class ResidualQCFSNet(nn.Module):
    """stem -> identity-skip block -> downsampling block (1x1 stride-2 conv on the skip) -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), QCFS(8, 1.5))
        self.conv1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.act1 = QCFS(4, 1.0)
        self.conv2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.act2 = QCFS(4, 2.0)
        self.down_main = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                       QCFS(2, 1.0), nn.Conv2d(8, 8, 3, padding=1))
        self.down_skip = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2), nn.BatchNorm2d(8))
        self.act3 = QCFS(4, 1.5)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.act2(self.conv2(self.act1(self.conv1(x))) + x)
        x = self.act3(self.down_main(x) + self.down_skip(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_qcfs_mlp(seed: int = 0) -> TorchCase:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 24), nn.BatchNorm1d(24), QCFS(4, 1.5),
                          nn.Linear(24, 12), nn.BatchNorm1d(12), QCFS(2, 1.0),
                          nn.Linear(12, 10))
    return TorchCase(randomize_batchnorm(model, seed).eval(), (16,))


def make_qcfs_cnn(seed: int = 0) -> TorchCase:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), QCFS(8, 2.0),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), QCFS(4, 1.5),
        nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), QCFS(2, 1.0),
        nn.Dropout(0.2), nn.Linear(16, 10))
    return TorchCase(randomize_batchnorm(model, seed).eval(), (1, 8, 8))


def make_qcfs_residual(seed: int = 0) -> TorchCase:
    torch.manual_seed(seed)
    return TorchCase(randomize_batchnorm(ResidualQCFSNet(), seed).eval(), (1, 8, 8))


MODEL_BUILDERS = {"mlp": make_qcfs_mlp, "cnn": make_qcfs_cnn, "residual": make_qcfs_residual}


@pytest.fixture
def qcfs_mlp() -> TorchCase:
    return make_qcfs_mlp()


@pytest.fixture
def qcfs_cnn() -> TorchCase:
    return make_qcfs_cnn()


@pytest.fixture
def qcfs_residual() -> TorchCase:
    return make_qcfs_residual()


@pytest.fixture(params=sorted(MODEL_BUILDERS))
def qcfs_model(request) -> TorchCase:
    """Each of the small QCFS models in turn."""
    return MODEL_BUILDERS[request.param]()
