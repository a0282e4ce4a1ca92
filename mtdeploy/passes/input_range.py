"""The input's fixed-point range: where it comes from, and how much of the data it clips.

A real-valued first layer receives ``round(x * 2**input_exp)`` clipped to the input's integer
range (semantics §3), so every |x| above the representable maximum saturates silently on the
chip. The range is chosen, in order of precedence, from ``--input-max``, from calibration
samples (their largest |x|: the input layer is exact for every calibration value), from the
range :func:`mtdeploy.nn.save_traced` recorded with the model, else 1.0 (inputs in [-1, 1]).
Compile reports the share of calibration values that saturate, so a wrong range is seen
before a chip run rather than after it.
"""
from __future__ import annotations

import math

import numpy as np

from mtdeploy.errors import InputError

DEFAULT_INPUT_MAX = 1.0
_CHUNK = 1 << 20        # values per block when scanning (possibly memory-mapped) samples


def _blocks(x):
    """|x| over all samples, a block of samples at a time (a memory map is never read whole)."""
    flat = np.asarray(x).reshape(len(x), -1)
    rows = max(1, _CHUNK // max(flat.shape[1], 1))
    for i in range(0, len(flat), rows):
        yield np.abs(flat[i:i + rows])


def largest_abs(x) -> float:
    """max |x| over all samples."""
    return max(float(block.max()) for block in _blocks(x))


def choose_input_max(given: float | None, calib=None, stored: float | None = None
                     ) -> tuple[float, str]:
    """(input_max, where it came from) by the module's precedence."""
    if given is not None:
        return float(given), "--input-max"
    if calib is not None:
        peak = largest_abs(calib)
        if not (peak > 0 and math.isfinite(peak)):
            raise InputError("calib: every calibration value is 0; the input range cannot be "
                             "derived from it (give input_max)")
        return peak, f"calibration ({len(calib)} samples)"
    if stored is not None:
        return float(stored), "the model file (save_traced input_max)"
    return DEFAULT_INPUT_MAX, "default (inputs assumed in [-1, 1]; pass calibration data to derive it)"


def representable_max(input_exp: int, input_bits: int) -> float:
    """The largest |x| the input's integers hold without clipping."""
    return (2 ** (input_bits - 1) - 1) / 2.0 ** input_exp


def input_range_report(meta: dict, source: str, calib=None) -> dict:
    """The report's ``input`` section: the range, its source and, with calibration data, how
    many values it saturates (and a warning when any do)."""
    top = representable_max(int(meta["input_exp"]), int(meta["input_bits"]))
    row = {"input_max": float(meta["input_max"]), "input_max_source": source,
           "input_exp": int(meta["input_exp"]), "input_bits": int(meta["input_bits"]),
           "representable_max": top}
    if calib is None:
        return row
    clipped, peak = 0, 0.0
    for block in _blocks(calib):      # one pass: the count beyond the range and the peak
        clipped += int(np.count_nonzero(block > top))
        peak = max(peak, float(block.max()))
    size = int(np.size(calib))
    row.update({"calib_samples": int(len(calib)), "calib_largest_abs": peak,
                "saturated_values": clipped, "saturated_share": clipped / max(size, 1)})
    if clipped:
        row["warning"] = (f"{clipped} of {size} calibration input values "
                          f"({100 * clipped / size:.2f}%) exceed the input's fixed-point "
                          f"range |x| <= {top:.4g} and saturate (largest |x| {peak:.4g}); "
                          f"use --input-max {peak:.4g}, or --calib without --input-max")
    return row
