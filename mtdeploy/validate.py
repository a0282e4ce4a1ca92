"""Checks of user-given numbers, shared by the API, the passes, the front ends and the profiles.

Every check raises :class:`InputError` whose message starts with the parameter's name, so the
CLI can show it as the option the user typed (``cli.parser.in_options``). A NaN, an infinity,
a bool or a float where an integer is meant is refused, never truncated or passed on: such a
value otherwise surfaces as a math error deep inside a pass, or as a silently wrong network.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from mtdeploy.errors import InputError

__all__ = ["real", "integer", "finite_params", "graph_values", "SEED_MAX"]

SEED_MAX = 2 ** 32 - 1   # seeds of numpy's and torch's generators and the TPP stream


def _bounds(lo, hi, lo_open: bool) -> str:
    """'in [lo, hi]', '> lo', '>= lo' or '<= hi' (empty without bounds)."""
    def text(v) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{text(lo)}, {text(hi)}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {text(lo)}"
    return "" if hi is None else f"<= {text(hi)}"


def real(name: str, value, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False) -> float:
    """``value`` as a finite float within [lo, hi] (``lo_open``: lo excluded)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    number = float(value) if ok else math.nan
    if not (ok and math.isfinite(number)
            and (lo is None or number > lo or (number == lo and not lo_open))
            and (hi is None or number <= hi)):
        raise InputError(f"{name} must be a finite number {_bounds(lo, hi, lo_open)}".rstrip()
                         + f", got {value!r}")
    return number


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int within [lo, hi]; bools and floats (even 2.0) are refused."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not (ok and (lo is None or value >= lo) and (hi is None or value <= hi)):
        raise InputError(f"{name} must be an integer {_bounds(lo, hi, False)}".rstrip()
                         + f", got {value!r}")
    return int(value)


def finite_params(label: str, params: dict) -> None:
    """Every parameter array of layer ``label`` finite: a NaN or infinite weight would poison
    every scale computed from it (quantization, the budget model) or make the layer's
    behaviour check fail for reasons unrelated to the layer's type."""
    for name, value in params.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise InputError(f"non-finite {name} in {label} (NaN or infinity in "
                             f"{int(arr.size - np.count_nonzero(np.isfinite(arr)))} of "
                             f"{arr.size} values)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# IR attributes with a meaning fixed by docs/ir-format.md: name -> (check, description). An
# edited or hand-made file can put anything there; these are the values the simulators and
# backends divide by, shift by or loop over.
_ATTR_RULES = {
    "threshold_int": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "v_init_int": (_is_int, "an integer"),
    "exp": (lambda v: _is_int(v) and abs(v) <= 1024, "an integer in [-1024, 1024]"),
    "levels": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "v_init": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
               and 0 <= v <= 1, "a number in [0, 1]"),
    "window": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_int, v))
               and 0 <= v[0] < v[1], "[start, end) with 0 <= start < end"),
}


def graph_values(graph, where: str) -> None:
    """Every number of a converted graph read from a file usable: T >= 1, every parameter real
    and finite, integer parameters (``*_int``) of an integer dtype, thresholds > 0, the
    attributes in ``_ATTR_RULES`` as documented and no NaN or infinity anywhere in the
    attributes. InputError naming the file and the layer otherwise."""
    for node in graph:
        label = f"{where}: {node.label()}"
        if node.T is not None and not (_is_int(node.T) and node.T >= 1):
            raise InputError(f"{label}: T must be an integer >= 1, got {node.T!r}")
        _check_params(label, node.params, tuple(node.shape))
        for name, (ok, wanted) in _ATTR_RULES.items():
            if name in node.attrs and not ok(node.attrs[name]):
                raise InputError(f"{label}: {name} must be {wanted}, got {node.attrs[name]!r}")
        if not _all_finite(node.attrs):
            raise InputError(f"{label}: an attribute holds NaN or infinity")


def _check_params(label: str, params: dict, shape: tuple) -> None:
    """Real and finite arrays; ``X_int`` ones of an integer dtype, shaped like ``X``, or, with
    no ``X`` (``bias_int``), one value per neuron of the layer; a threshold one number > 0."""
    finite_params(label, params)
    for name, value in params.items():
        arr = np.asarray(value)
        integral = name.endswith("_int")
        if arr.dtype.kind not in ("iu" if integral else "biuf"):
            raise InputError(f"{label}: parameter {name} has dtype {arr.dtype}; expected "
                             f"{'integers' if integral else 'real numbers'}")
        twin = params.get(name[:-len("_int")]) if integral else None
        wanted = np.shape(twin) if twin is not None else shape
        if integral and arr.shape != tuple(wanted):
            raise InputError(f"{label}: parameter {name} has shape {arr.shape}, expected "
                             f"{tuple(wanted)}")
    if "threshold" in params:
        th = np.asarray(params["threshold"])
        real(f"{label}: threshold", th.item() if th.size == 1 else None, 0.0, lo_open=True)
    if "channel_unit" in params:     # per-channel units: one real unit per output channel
        units = np.asarray(params["channel_unit"])
        if units.dtype.kind != "f" or units.shape != shape[:1] or not np.all(units > 0):
            raise InputError(f"{label}: parameter channel_unit must be one number > 0 per "
                             f"output channel ({shape[:1]}), got dtype {units.dtype}, shape "
                             f"{units.shape}")


def _all_finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True
