"""Train a small mixed-precision QCFS CNN on scikit-learn's 8x8 digits and save it for mtdeploy.

    python examples/digits/train.py            # writes model.pt, digits_test.npz, digits_calib.npz

Each QCFS layer has its own number of levels (default 8,4,2,4), which mtdeploy turns into its
own number of time steps: the network is a mixed-timestep SNN once converted.
"""
from __future__ import annotations

import argparse
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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE,
                        help="where to write model.pt and the .npz files "
                             "(default: next to this script)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default 2; use 1 on a busy machine)")
    parser.add_argument("--levels", default=DEFAULT_LEVELS,
                        help="QCFS levels of the four activation layers "
                             f"(default {DEFAULT_LEVELS})")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Train, report, save; returns the test accuracy, training time and written paths."""
    args = parse_args(argv)
    common = _load_common()
    levels = common.parse_levels(args.levels, 4)
    common.seed_everything(args.seed, args.threads)
    data = common.load_digits_split()
    model = build_model(levels)
    print(f"digits: {len(data.x_train)} train / {len(data.x_test)} test samples, levels {levels}")
    seconds = common.train(model, data, args.epochs, args.seed)
    acc = common.accuracy(model, data.x_test, data.y_test)
    paths = common.save_artifacts(model, data, args.out_dir, prefix="digits", seed=args.seed)
    print(f"ANN test accuracy {acc:.4f} after {args.epochs} epochs ({seconds:.1f} s)")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return {"accuracy": acc, "train_seconds": seconds, "levels": levels, **paths}


if __name__ == "__main__":
    main()
