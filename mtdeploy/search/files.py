"""File-level search, what ``mtdeploy search`` runs: model + labelled data in, TorchScript out.

Kept here rather than in the CLI so that the CLI stays a thin parser and the same call serves
scripts and benchmarks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.search.engine import SearchResult, search


def split_calibration(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Stratified, seeded split into (calib_x, calib_y, val_x, val_y).

    Each class contributes ``val_fraction`` of its samples (at least one when it has two or
    more) to validation, so small data sets keep every class on both sides.
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must lie strictly between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        take = int(round(val_fraction * len(idx)))
        if len(idx) >= 2:
            take = min(max(take, 1), len(idx) - 1)
        else:
            take = 0
        val_idx.extend(idx[:take].tolist())
    val_mask = np.zeros(len(y), dtype=bool)
    val_mask[val_idx] = True
    if val_mask.all() or not val_mask.any():
        raise InputError(f"cannot split {len(y)} samples into calibration and validation; give "
                         "more data or a separate --val file")
    return x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]


def _labelled(path, what: str) -> tuple[np.ndarray, np.ndarray]:
    from mtdeploy.io import load_samples

    x, y = load_samples(path)
    if y is None:
        raise InputError(f"{path}: the {what} data needs labels: an .npz with arrays 'x' and 'y'")
    return x, y


def search_files(model, data, output, val=None, budget=None, input_shape=None, front=None,
                 plot=None, seed: int = 0, device: str = "cpu", epochs: int = 5,
                 finetune_weights: bool = False, val_fraction: float = 0.3,
                 target: str | None = "loihi2", trust_pickle: bool = False,
                 threads: int | None = None, progress: bool | None = None) -> SearchResult:
    """Load ``model`` and ``data`` (.npz with x, y), search, and write ``output`` (TorchScript),
    the front JSON (default: ``<output>.front.json``) and, when asked, the plot.

    Every file is written atomically; nothing is written if the search fails.
    """
    from mtdeploy.api import load_model
    from mtdeploy.search.front import plot_front, write_front_json

    from mtdeploy.search.budget import parse_budget

    budget = parse_budget(budget)   # a bad budget string fails before any work is done
    output = Path(output)
    if output.suffix.lower() not in (".pt", ".ts", ".pth"):
        raise InputError(f"-o {output}: the searched model is written as TorchScript; give a "
                         ".pt path")
    graph = load_model(model, input_shape, trust_pickle)
    x, y = _labelled(data, "search")
    if val is not None:
        calib_x, calib_y = x, y
        val_x, val_y = _labelled(val, "validation")
    else:
        calib_x, calib_y, val_x, val_y = split_calibration(x, y, val_fraction, seed)
    result = search(graph, calib_x, calib_y, val_x, val_y, budget=budget, seed=seed,
                    device=device, finetune_epochs=epochs, finetune_weights=finetune_weights,
                    target=target, threads=threads, progress=progress)
    result.settings.update({"model": str(model), "data": str(data),
                            "val": str(val) if val is not None else None,
                            "val_fraction": None if val is not None else val_fraction})
    result.module().save_torchscript(output)
    write_front_json(result, front or output.with_suffix(".front.json"))
    if plot:
        plot_front(result, plot, title=f"{Path(model).name}: per-layer timestep search")
    return result
