"""Train a small mixed-precision QCFS CNN on scikit-learn's 8x8 digits and save it for mtdeploy.

    python examples/digits/train.py            # writes model.pt, digits_test.npz, digits_calib.npz

Each QCFS layer has its own number of levels (default 8,4,2,4), which mtdeploy turns into its
own number of time steps: the network is a mixed-timestep SNN once converted.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from torch import nn

from mtdeploy.nn import QCFS

HERE = Path(__file__).resolve().parent
DEFAULT_LEVELS = "8,4,2,4"


def _load_common():
    """examples/common.py by path: the examples are scripts, not an installed package."""
    name = "mtdeploy_examples_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def build_model(levels: list[int], threshold: float = 2.0) -> nn.Module:
    """conv-BN-QCFS x2 -> avgpool -> conv-BN-QCFS -> linear-BN-QCFS -> linear (10 logits).

    Average pooling, not max pooling: it is linear, so it maps onto synapses.
    """
    l1, l2, l3, l4 = levels
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), QCFS(l1, threshold),   # 16x8x8
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), QCFS(l2, threshold),  # 32x8x8
        nn.AvgPool2d(2),                                                            # 32x4x4
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), QCFS(l3, threshold),  # 32x4x4
        nn.Flatten(),
        nn.Linear(512, 64), nn.BatchNorm1d(64), QCFS(l4, threshold),
        nn.Dropout(0.1),
        nn.Linear(64, 10),
    )


def main(argv=None) -> dict:
    """Train, report, save; returns the test accuracy, training time and written paths."""
    return _load_common().run_example(
        argv, description=__doc__.splitlines()[0], default_out=HERE, build_model=build_model,
        n_levels=4, default_levels=DEFAULT_LEVELS,
        levels_help="the four activation layers", label="digits")


if __name__ == "__main__":
    main()
