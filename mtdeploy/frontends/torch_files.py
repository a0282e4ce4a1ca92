"""Reading PyTorch model files safely: the file-format job of the torch front end.

Kept apart from the IR builder and the graph walkers because its concern is trust, not
semantics: a TorchScript archive is loaded first (loading it runs no code from the file), then
``torch.load(weights_only=True)``, and a pickled ``nn.Module`` only with ``trust_pickle``. It
also reads the input shape that :func:`mtdeploy.nn.save_traced` records in an archive and
parses user-given input shapes.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.serialize import DAMAGED_FILE_ERRORS
from mtdeploy.nn import MODEL_META_FILE

__all__ = ["TORCHSCRIPT_HOWTO", "load_torch_model", "stored_input_shape", "parse_input_shape",
           "first_line"]

TORCHSCRIPT_HOWTO = "torch.jit.trace(model.eval(), example_input).save(path)"


def load_torch_model(path, trust_pickle: bool = False) -> nn.Module:
    """Load a ``.pt`` model: a TorchScript archive, or (only if trusted) a pickled ``nn.Module``.

    TorchScript is preferred because loading it runs no Python code from the file; unpickling a
    ``torch.save``'d module does, so it needs ``trust_pickle=True``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    _check_zip_integrity(path)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        if _is_torchscript_archive(path):
            raise InputError(f"{path}: TorchScript archive that cannot be loaded "
                             f"({first_line(exc)})") from None
        # not TorchScript: try the pickle formats
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the class it refused when the file is a valid pickle
        # of Python objects (a module); anything else means the bytes are not a pickle at all.
        if not re.search(r"[Uu]nsupported (class|global)|instantiate unsupported", str(exc)):
            raise InputError(f"{path}: not a PyTorch model file, or corrupt "
                             f"({str(exc).rsplit(':', 1)[-1].strip()})") from None
        return _load_trusted_pickle(path, trust_pickle)
    except Exception as exc:
        raise InputError(f"{path}: not a PyTorch model file, or corrupt "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
    raise InputError(_no_architecture_message(path, obj))


def _check_zip_integrity(path: Path) -> None:
    """Refuse a zip archive (TorchScript or ``torch.save``) with a member that fails its CRC.

    torch reads archive members without checking their CRCs, and a damaged tensor record can
    then crash the whole process (seen: a segfault reading a Linear's weight from a file with
    one byte changed); checking every member's CRC first makes random damage an error.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except DAMAGED_FILE_ERRORS as exc:
        raise InputError(f"{path}: corrupt zip archive ({first_line(exc)})") from None
    if bad is not None:
        raise InputError(f"{path}: corrupt: the archive member {bad} fails its CRC check")


def stored_meta(path) -> dict:
    """The ``mtdeploy.json`` that :func:`mtdeploy.nn.save_traced` put in a TorchScript archive,
    or {} (another file, or a model saved some other way). Read straight from the zip, so
    nothing in the file runs."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"/extra/{MODEL_META_FILE}")]
            if not names:
                return {}
            meta = json.loads(zf.read(names[0]))
    except DAMAGED_FILE_ERRORS:
        return {}
    return meta if isinstance(meta, dict) else {}


def stored_input_shape(path) -> tuple[int, ...] | None:
    """The input shape recorded by :func:`mtdeploy.nn.save_traced`, or None."""
    meta = stored_meta(path)
    if not meta:
        return None
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise InputError(f"{path}: {MODEL_META_FILE} holds no valid input_shape ({shape!r}); "
                         "pass --input-shape")
    return tuple(shape)


def stored_input_max(path) -> float | None:
    """The input range (largest |x|) recorded by ``save_traced(..., input_max=)``, or None."""
    value = stored_meta(path).get("input_max")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e30:
        raise InputError(f"{path}: {MODEL_META_FILE} holds an invalid input_max ({value!r}); "
                         "pass --input-max")
    return float(value)


def _is_torchscript_archive(path: Path) -> bool:
    """A zip holding TorchScript code (``torch.save`` zips hold only ``data.pkl`` and tensors)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)
    except DAMAGED_FILE_ERRORS:
        return False


def _load_trusted_pickle(path: Path, trust_pickle: bool) -> nn.Module:
    if not trust_pickle:
        raise InputError(
            f"{path} is a pickled nn.Module (torch.save(model)); unpickling it runs Python code "
            f"from the file, so it is refused by default. Either re-save the model as TorchScript "
            f"({TORCHSCRIPT_HOWTO}) or, if you trust the file, pass --trust-pickle "
            f"(trust_pickle=True).")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise InputError(
            f"{path}: the pickle refers to code that cannot be imported here ({first_line(exc)}); "
            f"make the model's class importable, or re-save as TorchScript ({TORCHSCRIPT_HOWTO})"
        ) from None
    except Exception as exc:
        raise InputError(f"{path}: cannot unpickle "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(obj, nn.Module):
        raise InputError(_no_architecture_message(path, obj))
    return obj


def _no_architecture_message(path: Path, obj: Any) -> str:
    what = "a state_dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    return (f"{path} holds {what}, not a model: weights alone have no architecture. Save the "
            f"model itself, preferably as TorchScript ({TORCHSCRIPT_HOWTO})")


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line error messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_input_shape(shape) -> tuple[int, ...]:
    """'1,28,28' or (1, 28, 28) -> (1, 28, 28): one sample, no batch axis: CHW, CL or (features,)."""
    if isinstance(shape, str):
        parts = [p for p in shape.replace("x", ",").split(",") if p.strip()]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise InputError(f"input shape {shape!r}: expected integers like 1,28,28") from None
    else:
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise InputError(f"input shape {shape!r}: expected a sequence of integers") from None
    if len(dims) not in (1, 2, 3) or min(dims, default=0) < 1:
        raise InputError(f"input shape {dims}: expected C,H,W (images), C,L (signals) or F "
                         "(vectors), positive, without the batch axis")
    return dims

