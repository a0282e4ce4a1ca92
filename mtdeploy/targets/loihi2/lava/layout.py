"""Array layouts: the IR's (C, H, W) against Lava's (W, H, C), the order lava.proc.conv reads.

Every other shape is flat on the Lava side. Batched helpers take and return (N, *shape).
"""
from __future__ import annotations

import numpy as np


def lava_shape(shape) -> tuple[int, ...]:
    """IR (C, H, W) -> Lava (W, H, C); anything else -> flat."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape[2], shape[1], shape[0]
    return (int(np.prod(shape)),)


def to_lava(a: np.ndarray, shape) -> np.ndarray:
    """Batch (N, *IR shape) -> (N, *Lava shape)."""
    a = np.asarray(a)
    if len(shape) == 3:
        return np.ascontiguousarray(a.transpose(0, 3, 2, 1))
    return a.reshape(a.shape[0], -1)


def from_lava(a: np.ndarray, shape) -> np.ndarray:
    """Batch (N, *Lava shape) -> (N, *IR shape)."""
    a = np.asarray(a)
    if len(shape) == 3:
        return np.ascontiguousarray(a.transpose(0, 3, 2, 1))
    return a.reshape(a.shape[0], *shape)


def one_to_lava(a: np.ndarray, shape) -> np.ndarray:
    """One unbatched array in IR shape -> Lava shape."""
    return to_lava(np.asarray(a)[None], shape)[0]


def lava_order(shape) -> np.ndarray:
    """For each flat Lava-layout position, the flat index of the same element in IR order."""
    n = int(np.prod(shape))
    return to_lava(np.arange(n).reshape(1, *shape), shape).ravel()
