"""The search's labelled data: a seeded, stratified calibration/validation split, and the checks
that turn arrays into tensors the model can take (so that bad data fails before any work)."""
from __future__ import annotations

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.io import check_samples
from mtdeploy.ir.graph import Graph


def split_calibration(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Stratified, seeded split into (calib_x, calib_y, val_x, val_y).

    Each class contributes ``val_fraction`` of its samples (at least one when it has two or
    more) to validation, so small data sets keep every class on both sides.
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
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
                         "more data or separate validation data")
    return x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]


def as_tensors(graph: Graph, x, y, what: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as float32/int64 tensors on ``device``, after checking that ``x`` fits the
    model's input and ``y`` holds one class label per sample within its outputs."""
    x, y = check_samples(x, y, input_shape=tuple(graph.input.shape),
                         classes=int(np.prod(graph[graph.output].shape)), what=what)
    return (torch.as_tensor(x, dtype=torch.float32, device=device),
            torch.as_tensor(y, device=device))
