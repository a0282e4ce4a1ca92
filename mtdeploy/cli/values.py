"""Option strings (and the files they may name) -> the Python values the API takes."""
from __future__ import annotations

import argparse
import json
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
    if text.isdigit():
        return int(text)
    if Path(text).is_file():
        text = Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"--timesteps: expected an integer, a JSON object or a JSON file, got "
                         f"{spec!r}") from None
    if not isinstance(value, (int, dict)) or isinstance(value, bool):
        raise InputError("--timesteps JSON must be an integer or an object {layer: T}")
    return value
