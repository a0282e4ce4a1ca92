"""Option strings (and the files they may name) -> the Python values the API takes."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mtdeploy.errors import InputError
from mtdeploy.validate import SEED_MAX, integer


def shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: ``C,H,W`` (or ``CxHxW``, or ``F``), an argparse type."""
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W, C,L or F, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


NAME_MAX, PATH_MAX = 255, 4095    # bytes per path component and per path (Linux)


def path(text: str) -> str:
    """A file or folder argument the OS can look up, an argparse type: a name it cannot
    (a component over 255 bytes, a NUL) would fail every file call with an OSError."""
    raw = os.fsencode(text)
    if b"\0" in raw or len(raw) > PATH_MAX or any(len(c) > NAME_MAX for c in raw.split(b"/")):
        raise argparse.ArgumentTypeError(f"not a usable path (a NUL byte, a name over {NAME_MAX}"
                                         f" bytes or a path over {PATH_MAX}): {text[:60]!r}...")
    return text


def seed(text: str) -> int:
    """``--seed``: an integer in [0, 2^32 - 1] (numpy's and torch's generators refuse
    negative seeds), an argparse type."""
    try:
        return integer("seed", int(text), 0, SEED_MAX)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("seed ")) from None


def timesteps(spec: str | None):
    """``--timesteps``: an integer for all layers, a JSON object {layer: T}, or a JSON file."""
    if spec is None:
        return None
    text = spec.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if _is_file(text):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--timesteps {spec!r}: cannot read the file as JSON text "
                             f"({type(exc).__name__})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"--timesteps: expected an integer, a JSON object or a JSON file, got "
                         f"{spec!r}") from None
    if not isinstance(value, (int, dict)) or isinstance(value, bool):
        raise InputError("--timesteps JSON must be an integer or an object {layer: T}")
    return value


def _is_file(text: str) -> bool:
    """Whether ``text`` names a file; False for what cannot be a path (a JSON text may be
    longer than a file name may)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False
