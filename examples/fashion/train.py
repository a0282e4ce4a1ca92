"""Train a QCFS CNN (3 conv + 2 linear) on Fashion-MNIST and save it for mtdeploy.

    python examples/fashion/train.py [--data-dir DIR] [--seed 0] [--epochs 4] [--levels 8,8,8,8]

Reads the four IDX files of Zalando's Fashion-MNIST (60,000 training / 10,000 test 28x28 grey
images, 10 classes) from /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist)
or --data-dir, with mtdeploy's own IDX reader. The 60,000 training images are split once, with a
fixed seed: 5,000 validation images (never trained on: the search selects on them), 6,000
calibration images (a subset of the training images, as calibration data usually is), and the
training images proper. The test set is used for nothing but the final figure.

Models are cached under build/fashion/<key>/ (model.pt, train.json), the key naming every
setting, so benchmarks and repeated runs reuse them; build/fashion/ also gets the split as
fashion_calib.npz and fashion_val.npz for `mtdeploy search --data ... --val ...`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's mtdeploy, also when run as a script

from mtdeploy.idx import load_idx_samples  # noqa: E402
from mtdeploy.io import atomic_path, write_json  # noqa: E402
from mtdeploy.nn import QCFS, save_traced  # noqa: E402

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE = ROOT / "build" / "fashion"
FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
SPLIT_SEED = 0
VAL_SAMPLES = 5000
CALIB_SAMPLES = 6000
MISSING = """Fashion-MNIST is not in {where}.
Install it (Debian/Ubuntu), which puts the four IDX files under /usr/share/datasets/fashion-mnist/:
    sudo apt-get install dataset-fashion-mnist
or, without root, unpack the package into a folder of your own and point --data-dir at it:
    apt-get download dataset-fashion-mnist
    dpkg-deb -x dataset-fashion-mnist_*.deb fashion-pkg
    python examples/fashion/train.py --data-dir fashion-pkg/usr/share/datasets/fashion-mnist
(any folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] works)"""


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
    """conv-BN-QCFS, avgpool, conv-BN-QCFS, avgpool, conv-BN-QCFS, linear-BN-QCFS, linear.

    Small on purpose (about 1.7 M multiply-adds per image): it trains in minutes on two CPU
    cores and the reference simulator runs the whole test set in seconds. Average pooling (not
    max pooling) is linear, so it maps onto synapses.
    """
    l1, l2, l3, l4 = levels
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), QCFS(l1, threshold),   # 16x28x28
        nn.AvgPool2d(2),                                                            # 16x14x14
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), QCFS(l2, threshold),  # 32x14x14
        nn.AvgPool2d(2),                                                            # 32x7x7
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), QCFS(l3, threshold),  # 32x7x7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128), nn.BatchNorm1d(128), QCFS(l4, threshold),
        nn.Linear(128, 10),
    )


def find_data(data_dir=None) -> Path:
    """The folder holding the four IDX files (plain or .gz); SystemExit saying how to get them."""
    where = Path(data_dir) if data_dir else DEFAULT_DATA
    for stem in (*FILES.values(), *(s.replace("images", "labels").replace("idx3", "idx1")
                                    for s in FILES.values())):
        if not ((where / stem).is_file() or (where / (stem + ".gz")).is_file()):
            raise SystemExit(MISSING.format(where=where))
    return where


def _images_file(where: Path, part: str) -> Path:
    plain = where / FILES[part]
    return plain if plain.is_file() else where / (FILES[part] + ".gz")


def load_split(data_dir=None, val_samples: int = VAL_SAMPLES,
               calib_samples: int = CALIB_SAMPLES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train", "val", "calib", "test"}: (x float32 (N,1,28,28) in [0,1], y int64).

    One fixed permutation of the training images (``SPLIT_SEED``): the first ``val_samples``
    are validation, the rest are training images, the first ``calib_samples`` of which are the
    calibration set. Every seed and script sees the same split.
    """
    where = find_data(data_dir)
    x, y = load_idx_samples(_images_file(where, "train"))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    val, rest = order[:val_samples], order[val_samples:]
    if len(rest) == 0:
        raise SystemExit(f"{where}: {len(x)} training images leave none to train on after "
                         f"{val_samples} validation images")
    x_test, y_test = load_idx_samples(_images_file(where, "test"))
    return {"train": (x[rest], y[rest]), "val": (x[val], y[val]),
            "calib": (x[rest[:calib_samples]], y[rest[:calib_samples]]),
            "test": (x_test, y_test)}


def model_key(levels, epochs: int, train_samples: int | None, seed: int) -> str:
    """The cache folder's name: every setting that changes the trained model."""
    return (f"L{'-'.join(map(str, levels))}_e{epochs}_n{train_samples or 'all'}_s{seed}")


def trained_model(split: dict, levels, epochs: int, seed: int, train_samples: int | None = None,
                  cache_dir=DEFAULT_CACHE, threads: int = 2, progress: bool = True,
                  log=print) -> Path:
    """build/fashion/<key>/model.pt, trained now unless a run with these settings cached it."""
    out = Path(cache_dir) / model_key(levels, epochs, train_samples, seed)
    if (out / "model.pt").is_file() and (out / "train.json").is_file():
        return out / "model.pt"
    common = _load_common()
    common.seed_everything(seed, threads)
    x, y = split["train"]
    if train_samples:
        pick = np.sort(np.random.default_rng(seed).permutation(len(x))[:train_samples])
        x, y = x[pick], y[pick]
    data = common.DigitsSplit(x, y, *split["test"])
    model = build_model(list(levels))
    log(f"fashion: training on {len(x)} images for {epochs} epoch(s), levels {list(levels)}, "
        f"seed {seed}")
    seconds = common.train(model, data, epochs, seed, batch_size=128, log=log, progress=progress)
    record = {"levels": list(levels), "epochs": epochs, "train_samples": len(x), "seed": seed,
              "train_seconds": seconds, "threads": threads,
              "val_acc": common.accuracy(model, *split["val"]),
              "test_acc": common.accuracy(model, *split["test"])}
    out.mkdir(parents=True, exist_ok=True)
    save_traced(model, torch.from_numpy(split["val"][0][:2]), out / "model.pt")
    write_json(out / "train.json", record)
    log(f"ANN validation accuracy {record['val_acc']:.4f}, test accuracy {record['test_acc']:.4f}"
        f" ({seconds:.0f} s); wrote {out / 'model.pt'}")
    return out / "model.pt"


def write_split_files(split: dict, cache_dir=DEFAULT_CACHE) -> dict[str, Path]:
    """fashion_calib.npz and fashion_val.npz (x, y) for ``mtdeploy search --data/--val``."""
    paths = {}
    for part in ("calib", "val"):
        path = Path(cache_dir) / f"fashion_{part}.npz"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, x=split[part][0], y=split[part][1])
        paths[part] = path
    return paths


def main(argv=None) -> dict:
    """Train (or reuse), report, save; returns the paths and the training record."""
    common = _load_common()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, help=f"folder of the IDX files (default {DEFAULT_DATA})")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                    help="where models (one folder per settings) and the split files go")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-samples", type=int, default=None,
                    help="train on a seeded subset of this many images (default: all 55,000)")
    ap.add_argument("--levels", default="8,8,8,8", help="QCFS levels of the four activation "
                    "layers (default 8,8,8,8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--val-samples", type=int, default=VAL_SAMPLES)
    ap.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES)
    args = ap.parse_args(argv)
    levels = common.parse_levels(args.levels, 4)
    split = load_split(args.data_dir, args.val_samples, args.calib_samples)
    model = trained_model(split, levels, args.epochs, args.seed, args.train_samples,
                          args.cache_dir, args.threads)
    paths = write_split_files(split, args.cache_dir)
    record = json.loads((model.parent / "train.json").read_text())
    print(f"model {model} (ANN test accuracy {record['test_acc']:.4f}); calibration and "
          f"validation data {paths['calib']}, {paths['val']}")
    return {"model": model, **paths, "record": record}


if __name__ == "__main__":
    main()
