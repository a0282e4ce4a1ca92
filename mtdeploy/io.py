"""File helpers: the one atomic writer (temp files beside their targets, then renames), IR
files, and user data loading.

What an output may replace is decided here, once: a file target must be absent or a regular
file; a build directory must be absent, empty, or a build this module wrote (it carries
:data:`BUILD_MARKER`, listing its files), unless ``force``; never a non-directory, the current
directory or one above it, nor a directory holding one of the caller's input files. Outputs get
the modes a plain ``open``/``mkdir`` would give (the umask applies), and a failed write, a full
disk included, is an :class:`InputError` naming the path, with nothing left behind.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from mtdeploy import idx
from mtdeploy.errors import InputError, MtdeployError
from mtdeploy.ir.serialize import DAMAGED_FILE_ERRORS, read_zip, write_zip

BUILD_MARKER = ".mtdeploy-build"   # in every build directory: {"files": [what atomic_dir wrote]}
_PENDING: dict[str, object] = {}   # temp file or build directory being written -> its target
_FULL_DISK = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT))


def _target(path) -> Path:
    """``path`` with every symbolic link resolved (a write through a link lands where it
    points); an empty path is refused rather than read as the current directory."""
    if not os.fspath(path):
        raise InputError("an empty output path; name a file or directory")
    return Path(os.path.realpath(path))


def _check_parent(path, target: Path) -> None:
    """The nearest existing directory above ``target`` must be one we can create files in:
    tried with an unnamed temp file, since permission bits do not tell (root, /proc)."""
    parent = target.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{path}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {parent} ({exc.strerror or exc})") from None


def check_output_file(path) -> Path:
    """Where a file output ``path`` will be written (links resolved), if a file may be written
    there: absent or a regular file, in a directory we may write. Call it before long work."""
    target = _target(path)
    if os.path.lexists(target) and not stat.S_ISREG(os.stat(target).st_mode):
        what = "a directory" if target.is_dir() else "not a regular file"
        raise InputError(f"{path}: {what}; an output file may replace only a regular file")
    _check_parent(path, target)
    return target


def check_output_files(paths, protect: Iterable = ()) -> list[Path]:
    """:func:`check_output_file` for outputs written together: no two the same file, none one
    of the inputs in ``protect``."""
    targets = [check_output_file(p) for p in paths]
    inputs = {Path(os.path.realpath(p)): p for p in protect}
    for path, target in zip(paths, targets):
        if target in inputs:
            raise InputError(f"{path}: is also an input ({inputs[target]}); write the output "
                             "elsewhere")
        if targets.count(target) > 1:
            raise InputError(f"{path}: named for two outputs; give each its own file")
    return targets


def check_output_dir(path, force: bool = False, protect: Iterable = ()) -> Path:
    """Where a build directory ``path`` will be (links resolved), if it may be (re)placed there:
    absent, empty, or a build mtdeploy wrote (anything else only with ``force``); never a
    non-directory, the current directory or one above it, nor a directory holding a path in
    ``protect`` (the caller's inputs), whatever ``force`` says. The directory is read under
    the lock that builds are swapped under, so a build being replaced is never seen half gone."""
    target = _target(path)
    with _locked(target.parent):
        return _check_dir(path, target, force, protect)


def _check_dir(path, target: Path, force: bool, protect: Iterable) -> Path:
    """:func:`check_output_dir`'s rule, for a caller that holds the lock."""
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise InputError(f"{path}: the current directory or one above it; name a new "
                         "directory for the build")
    for kept in protect:
        kept_at = Path(os.path.realpath(kept))
        if kept_at == target or target in kept_at.parents:
            raise InputError(f"{path}: holds the input {kept}; name another directory for "
                             "the build")
    if os.path.lexists(target):
        if not target.is_dir():
            raise InputError(f"{path}: exists and is not a directory; mtdeploy replaces only "
                             "a directory")
        _check_replaceable(path, target, force)
    _check_parent(path, target)
    return target


def _check_replaceable(path, target: Path, force: bool) -> None:
    """An existing directory may be replaced when empty or a build holding only its own files."""
    entries = sorted(os.listdir(target))
    built = _build_files(target)
    foreign = [e for e in entries if built is None or (e not in built and e != BUILD_MARKER)]
    if not foreign or force:
        return
    shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
    what = ("a build that now also holds files mtdeploy did not write" if built is not None
            else "not an mtdeploy build")
    raise InputError(f"{path}: {what} ({shown}); name a new or empty directory, or use "
                     "force (--force) to replace it and everything in it")


def _build_files(directory: Path) -> set[str] | None:
    """The files the build in ``directory`` was written with, or None if it is no build."""
    try:
        doc = json.loads((directory / BUILD_MARKER).read_text())
        files = doc["files"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) \
        else None


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(path, directory: bool = False) -> None:
    """The mode ``open``/``mkdir`` would have given: mkstemp and mkdtemp make entries private."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def _failures_named(path):
    """A failed write (OSError, or a library's error reporting a full disk) -> InputError
    naming ``path``; for a file inside a build being written, :func:`atomic_dir` names the
    build directory instead."""
    try:
        yield
    except MtdeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else is re-raised below
        text = str(exc)
        reason = exc.strerror or text if isinstance(exc, OSError) else \
            next((r for r in _FULL_DISK if r in text), None)
        if reason is None or os.path.dirname(os.path.realpath(path)) in _PENDING:
            raise
        raise InputError(f"{path}: cannot write: {reason}") from None


@contextlib.contextmanager
def _parents(target: Path):
    """Create ``target``'s missing parent directories; remove them again if the block fails
    (those this call made: a concurrent writer may make the same ones)."""
    missing, made = [], []
    parent = target.parent
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)
            made.insert(0, directory)
    try:
        yield
    except BaseException:
        for directory in made:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temp path beside ``path``; rename it into place only if the block succeeds.

    ``path`` is checked first (:func:`check_output_file`); a failure of the block or the
    rename leaves no temp file behind and a write error is an :class:`InputError`.
    """
    enclosing = _PENDING.get(os.path.realpath(path))
    if enclosing is not None:   # the temp file of an enclosing atomic_path (atomic_paths)
        with _failures_named(enclosing):
            yield Path(path)
        return
    target = check_output_file(path)
    with _failures_named(path), _parents(target):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=suffix + ".tmp")
        os.close(fd)
        _PENDING[tmp] = path
        try:
            yield Path(tmp)
            _plain_mode(tmp)
            os.replace(tmp, target)
        finally:
            _PENDING.pop(tmp, None)
            if os.path.lexists(tmp):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_paths(*paths):
    """Several files written together: every target is checked before the block runs, and all
    are renamed into place only if it succeeds (a search's model, front and plot). The atomic
    writers (``write_json``, ``save_traced``, ``plot_front``) given a yielded temp path write
    it in place, and a failure names its output, not the temp file."""
    check_output_files(paths)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


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
def atomic_dir(path: str | os.PathLike, force: bool = False, protect: Iterable = ()):
    """Build a directory under a temp name; swap it in place of ``path`` only on success.

    What may be replaced is :func:`check_output_dir`'s rule, checked before the block (fail
    fast) and again at the swap, which holds a lock on the parent directory so that concurrent
    builds into one path replace each other whole. The directory gets :data:`BUILD_MARKER`.
    """
    target = check_output_dir(path, force, protect)
    with _failures_named(path), _parents(target):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        _PENDING[str(tmp)] = path
        try:
            yield tmp
            (tmp / BUILD_MARKER).write_text(json.dumps(
                {"files": sorted(p.name for p in tmp.iterdir())}) + "\n")
            _plain_mode(tmp, directory=True)
            with _locked(target.parent):
                _check_dir(path, target, force, protect)   # another process may have written
                _swap(tmp, target)
        finally:
            _PENDING.pop(str(tmp), None)
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive flock on ``directory`` itself (nothing to create, nothing left behind);
    no lock where the directory does not exist yet or cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)   # releases the lock


def _swap(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target``: an existing directory is first moved aside under a unique
    name (moved back if the second rename fails), then removed."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    old = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old")
    try:
        os.replace(target, old)
    except OSError:
        os.rmdir(old)
        raise
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)   # if even this fails, the old build stays at ``old``
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``X.npy`` (N, *input_shape), a labelled ``.npz`` with ``x`` and ``y``, or IDX data (an
    images file with its labels file beside it, or a directory holding one such pair;
    :mod:`mtdeploy.idx`), checked by :func:`check_samples` (real, finite, at least one sample;
    labels integer and >= 0)."""
    path = Path(path)
    if path.exists() and idx.is_idx(path):
        x, y = idx.load_idx_samples(path)
        return check_samples(x, y, what=str(path))
    if path.is_dir():
        raise InputError(f"{path}: a directory, and it holds no IDX files; give an .npy/.npz "
                         "file, an IDX images file, or a directory holding IDX files")
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
