"""File helpers: the one atomic writer (temp file beside the target, then rename), IR files,
and user data loading."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.serialize import read_zip, write_zip


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temp path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path, array: np.ndarray) -> None:
    # np.save appends ".npy" to a path without it: hand it an open file instead.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def save_graph(graph, path) -> None:
    """Write an IR graph as an ``.mtir`` zip (docs/ir-format.md), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write_zip(graph, fh)


def load_graph(path):
    """Read an ``.mtir`` file back into a validated graph."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return read_zip(path, str(path))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Build a directory under a temp name; swap it in place of ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``X.npy`` (N, *input_shape) or a labelled ``.npz`` with ``x`` and ``y``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy/.npz file ({exc})") from None
    if isinstance(data, np.ndarray):
        return data.astype(np.float64), None
    with data:
        if "x" not in data.files:
            raise InputError(f"{path}: an .npz input needs an array 'x' (and 'y' for accuracy); "
                             f"found {data.files}")
        x = data["x"].astype(np.float64)
        y = data["y"].astype(np.int64) if "y" in data.files else None
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    return x, y
