"""File helpers: the one atomic writer (temp file beside the target, then rename), IR files,
and user data loading."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.serialize import DAMAGED_FILE_ERRORS, read_zip, write_zip


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
    """``X.npy`` (N, *input_shape) or a labelled ``.npz`` with ``x`` and ``y``, checked by
    :func:`check_samples` (real, finite, at least one sample; labels integer and >= 0)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        _check_array_sizes(path)
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            x, y = data, None
        else:
            with data:
                if "x" not in data.files:
                    raise InputError(f"{path}: an .npz input needs an array 'x' (and 'y' for "
                                     f"accuracy); found {data.files}")
                x = data["x"]
                y = data["y"] if "y" in data.files else None
    except InputError:
        raise
    except DAMAGED_FILE_ERRORS as exc:
        # (object arrays, a truncated array or member, a damaged zip or header)
        raise InputError(f"{path}: not a readable .npy/.npz file ({exc})") from None
    except MemoryError:
        raise InputError(f"{path}: its arrays do not fit in memory") from None
    return check_samples(x, y, what=str(path))


def _check_array_sizes(path: Path) -> None:
    """Refuse an .npy (or .npz member) whose header promises more data than the file holds,
    before numpy allocates what the header says: a damaged or hostile header could ask for
    terabytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as fh:
                        _check_npy_header(fh, info.file_size, f"{path}: {info.filename}")
        return
    with open(path, "rb") as fh:
        _check_npy_header(fh, path.stat().st_size, str(path))


def _check_npy_header(fh, size: int, where: str) -> None:
    try:
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            return                      # np.load says what is wrong with it
        shape, _, dtype = read(fh)
    except DAMAGED_FILE_ERRORS:
        return                          # np.load says what is wrong with it
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if not dtype.hasobject and need > size - fh.tell():
        raise InputError(f"{where}: truncated: its header promises {need:,} bytes of data, the "
                         f"file holds {max(size - fh.tell(), 0):,}")


LABEL_LIMIT = 2 ** 31   # class indices beyond this are no model's outputs


def check_samples(x, y=None, *, input_shape=None, classes: int | None = None,
                  what: str = "input") -> tuple[np.ndarray, np.ndarray | None]:
    """``(x as float64, y as int64 or None)`` once they are usable, else InputError.

    One validator for every verb that takes samples (simulate, ladder, search), so that NaN,
    complex or string inputs and labels that are not class indices fail the same way
    everywhere instead of running and reporting a meaningless accuracy. ``input_shape``:
    one sample's shape the model takes; ``classes``: the number of model outputs.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise InputError(f"{what}: x must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 1 or len(x) == 0:
        raise InputError(f"{what}: no samples (x has shape {tuple(x.shape)}; expected (N, "
                         "*input_shape) with N >= 1)")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(f"{what}: x has shape {tuple(x.shape)}; the model takes (N, "
                         f"{', '.join(map(str, input_shape))})")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{what}: x holds {int(x.size - np.count_nonzero(np.isfinite(x)))} "
                         "NaN or infinite value(s)")
    return x, None if y is None else _check_labels(np.asarray(y), len(x), classes, what)


def _check_labels(y: np.ndarray, n: int, classes: int | None, what: str) -> np.ndarray:
    """Labels as one int64 class index per sample, in [0, classes)."""
    if y.shape != (n,):
        hint = "; one-hot labels: store y.argmax(1)" if y.ndim == 2 and y.shape[0] == n else ""
        raise InputError(f"{what}: y must hold one integer label per sample, shape ({n},), got "
                         f"shape {tuple(y.shape)}{hint}")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not (
            np.isfinite(y).all() and np.all(np.mod(y, 1) == 0))):
        raise InputError(f"{what}: y must hold integer class labels, got dtype {y.dtype}"
                         + (" with fractional or non-finite values" if y.dtype.kind == "f" else ""))
    top = LABEL_LIMIT if classes is None else classes
    if y.min() < 0 or y.max() >= top:
        bound = "[0, 2^31)" if classes is None else f"[0, {top - 1}] (the model has {top} outputs)"
        raise InputError(f"{what}: labels must lie in {bound}, found "
                         f"{int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)
