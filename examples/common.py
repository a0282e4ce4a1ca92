"""Shared by the example training scripts: the digits data, a seeded training loop, and saving.

The data is scikit-learn's bundled ``load_digits`` (8x8 grey images, 10 classes; no download),
pixels scaled to [0, 1], split once with a fixed ``random_state`` so every script and every
later tool (calibration, simulation) sees the same test set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtdeploy.nn import save_traced

SPLIT_SEED = 0
TEST_FRACTION = 0.25
CALIB_SAMPLES = 256


@dataclass
class DigitsSplit:
    x_train: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split() -> DigitsSplit:
    """The fixed train/test split of the digits data (stratified, 25 % test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return DigitsSplit(x_train, y_train, x_test, y_test)


def parse_levels(text: str, count: int) -> list[int]:
    """'8,4,2,4' -> [8, 4, 2, 4]; exactly ``count`` positive integers."""
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--levels: expected {count} comma-separated integers, got {text!r}")
    if len(levels) != count or min(levels) < 1:
        raise SystemExit(f"--levels: expected {count} positive integers, got {text!r}")
    return levels


def seed_everything(seed: int, threads: int = 2) -> None:
    """Seed torch's initialisers; a fixed thread count keeps CPU reductions reproducible."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def train(model: nn.Module, data: DigitsSplit, epochs: int, seed: int, lr: float = 3e-3,
          batch_size: int = 64, weight_decay: float = 1e-4, log=print,
          progress: bool = False) -> float:
    """Adam + cosine schedule, cross-entropy; returns the wall time in seconds.

    Shuffling uses its own seeded generator, so a run is reproducible given ``seed``.
    ``progress``: a tqdm bar per epoch (on stderr; tqdm leaves it out when stderr is not a
    terminal and only the epoch lines remain).
    """
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                           max(1, epochs * steps_per_epoch))
    shuffle = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=shuffle)
        total = 0.0
        for i in _batches(len(x), batch_size, progress, f"epoch {epoch + 1}/{epochs}"):
            idx = order[i:i + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss) * len(idx)
        if log and (epoch == epochs - 1 or (epoch + 1) % 10 == 0):
            log(f"epoch {epoch + 1:3d}/{epochs}: train loss {total / len(x):.4f}, "
                f"test accuracy {accuracy(model, data.x_test, data.y_test):.4f}")
    return time.perf_counter() - start


def _batches(n: int, batch_size: int, progress: bool, label: str):
    starts = range(0, n, batch_size)
    if not progress:
        return starts
    from tqdm import tqdm

    return tqdm(starts, desc=label, unit="batch", leave=False, disable=None)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Batched, so that a 10,000-image test set does not hold every activation at once."""
    model.eval()
    with torch.no_grad():
        predicted = np.concatenate([model(torch.from_numpy(x[i:i + batch_size])).argmax(1).numpy()
                                    for i in range(0, len(x), batch_size)])
    return float((predicted == y).mean())


def save_artifacts(model: nn.Module, data: DigitsSplit, out_dir: Path, prefix: str = "digits",
                   seed: int = 0) -> dict[str, Path]:
    """Write ``model.pt`` (traced TorchScript), ``<prefix>_test.npz`` and ``<prefix>_calib.npz``.

    TorchScript rather than a pickle: loading it runs no Python code from the file, and
    mtdeploy reads it without the training script on the import path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = {"model": out_dir / "model.pt", "test": out_dir / f"{prefix}_test.npz",
             "calib": out_dir / f"{prefix}_calib.npz"}
    save_traced(model, torch.from_numpy(data.x_test[:1]), paths["model"])
    np.savez(paths["test"], x=data.x_test.astype(np.float32), y=data.y_test.astype(np.int64))
    pick = np.random.default_rng(seed).choice(len(data.x_train), CALIB_SAMPLES, replace=False)
    pick.sort()
    np.savez(paths["calib"], x=data.x_train[pick].astype(np.float32),
             y=data.y_train[pick].astype(np.int64))
    return paths


def run_example(argv, *, description: str, default_out: Path, build_model, n_levels: int,
                default_levels: str, levels_help: str, label: str = "digits") -> dict:
    """The shared command line of the training scripts: parse, train, report, save.

    Returns the test accuracy, training time, levels and written paths.
    """
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", type=Path, default=default_out,
                        help="where to write model.pt and the .npz files "
                             "(default: next to this script)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default 2; use 1 on a busy machine)")
    parser.add_argument("--levels", default=default_levels,
                        help=f"QCFS levels: {levels_help} (default {default_levels})")
    args = parser.parse_args(argv)
    levels = parse_levels(args.levels, n_levels)
    seed_everything(args.seed, args.threads)
    data = load_digits_split()
    model = build_model(levels)
    print(f"{label}: {len(data.x_train)} train / {len(data.x_test)} test samples, levels {levels}")
    seconds = train(model, data, args.epochs, args.seed)
    acc = accuracy(model, data.x_test, data.y_test)
    paths = save_artifacts(model, data, args.out_dir, prefix="digits", seed=args.seed)
    print(f"ANN test accuracy {acc:.4f} after {args.epochs} epochs ({seconds:.1f} s)")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return {"accuracy": acc, "train_seconds": seconds, "levels": levels, **paths}
