"""The MNIST-family IDX format (MNIST, Fashion-MNIST, KMNIST, EMNIST): one array per file.

A file starts with a big-endian header: two zero bytes, a type code, the number of dimensions
n, then n 32-bit sizes; the data follows, big-endian, row-major. ``.gz`` files are read through
gzip. Images (``idx3``, type ubyte) become float32 in [0, 1] with a channel axis, (N, 1, H, W),
the layout the examples train on; labels (``idx1``) become int64. Damaged files (wrong magic,
a header that promises more data than the file holds, trailing bytes, label and image counts
that differ) are refused with an :class:`InputError` naming the file, before numpy allocates
what a header claims.
"""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from mtdeploy.errors import InputError

# type code -> big-endian numpy dtype (the IDX specification's list)
TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_DIMS = 8
_IDX_NAME = re.compile(r"idx\d", re.IGNORECASE)


def is_idx(path) -> bool:
    """Does ``path`` name IDX data: a directory holding IDX files, or an ``...idxN...`` file?"""
    path = Path(path)
    if path.is_dir():
        return bool(_idx_files(path))
    return bool(_IDX_NAME.search(path.name))


def read_idx(path) -> np.ndarray:
    """The array stored in one IDX file (plain or ``.gz``), checked against its header."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            shape, dtype = _header(fh, path)
            need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            data = fh.read(need)
            extra = fh.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable IDX file ({exc})") from None
    if len(data) < need:
        raise InputError(f"{path}: truncated: its header promises {need:,} bytes of data "
                         f"for shape {shape}, the file holds {len(data):,}")
    if extra:
        raise InputError(f"{path}: more data than the {need:,} bytes its header (shape "
                         f"{shape}) promises: not an IDX file, or a damaged one")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _header(fh, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    magic = fh.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in TYPES \
            or not 1 <= magic[3] <= MAX_DIMS:
        raise InputError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'}; "
                         "expected 0000 then a type code 08/09/0b/0c/0d/0e and 1-8 dimensions)")
    raw = fh.read(4 * magic[3])
    if len(raw) < 4 * magic[3]:
        raise InputError(f"{path}: truncated IDX header ({magic[3]} dimensions announced)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    return shape, np.dtype(TYPES[magic[2]])


def _idx_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and _IDX_NAME.search(p.name))


def labels_beside(images: Path) -> Path | None:
    """The labels file that belongs to an images file (``train-images-idx3-ubyte.gz`` ->
    ``train-labels-idx1-ubyte.gz``, with or without ``.gz``), or None."""
    name = images.name
    stem = re.sub(r"\.gz$", "", name, flags=re.IGNORECASE)
    base = re.sub("images", "labels", re.sub(r"idx3", "idx1", stem), flags=re.IGNORECASE)
    if base == stem:
        return None
    for candidate in (base, base + ".gz"):
        if (images.parent / candidate).is_file():
            return images.parent / candidate
    return None


def resolve(path) -> tuple[Path, Path | None]:
    """(images file, labels file or None) for an IDX file or a directory holding one pair."""
    path = Path(path)
    if not path.is_dir():
        return path, labels_beside(path)
    images = [p for p in _idx_files(path) if not re.search("idx1", p.name, re.IGNORECASE)]
    if len(images) != 1:
        found = ", ".join(p.name for p in images) or "none"
        raise InputError(f"{path}: a directory of IDX data must hold exactly one images file "
                         f"(found: {found}); name the images file instead, e.g. "
                         f"{path / (images[0].name if images else 'train-images-idx3-ubyte.gz')}")
    return images[0], labels_beside(images[0])


def load_idx_samples(path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y)`` from IDX data: an images file (its labels file beside it, when there is one)
    or a directory holding one images/labels pair. Unsigned-byte images are scaled to [0, 1];
    a 3-dimensional images file (N, H, W) gets a channel axis, (N, 1, H, W)."""
    images, labels = resolve(path)
    x = read_idx(images)
    if x.dtype == np.dtype(">u1"):
        x = x.astype(np.float32) / np.float32(255)
    else:
        x = x.astype(np.float64 if x.dtype.itemsize == 8 else np.float32)
    if x.ndim == 3:
        x = x[:, None, :, :]
    if labels is None:
        return x, None
    y = read_idx(labels)
    if y.ndim != 1:
        raise InputError(f"{labels}: a labels file holds one dimension (idx1), this one has "
                         f"shape {y.shape}")
    if len(y) != len(x):
        raise InputError(f"{images} holds {len(x):,} images but {labels.name} holds "
                         f"{len(y):,} labels: they do not belong together")
    return x, y.astype(np.int64)
