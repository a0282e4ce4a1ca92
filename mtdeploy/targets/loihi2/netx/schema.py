"""What lava-dl's stock NetX loader (``lava.lib.dl.netx.hdf5.Network``) accepts, as checks.

The rules below were read from lava-dl 0.6.0 / lava-nc 0.10.0 (``netx/hdf5.py``, ``netx/utils.py``,
``netx/blocks``, ``proc/lif``, ``proc/dense``, ``utils/weightutils.py``) and confirmed by loading
files in Lava (tests/test_netx_lava.py). They live here, with no Lava import, so that mtdeploy
can refuse a file *before* writing it and a lab can check a file without installing Lava.

A file is a list of layer dicts (``/layer/0`` ... ``/layer/<n-1>``): ``type`` (ASCII string),
``shape`` (C,H,W; netx reverses it to Lava's x,y,z), and per type ``weight``, ``bias``, conv
geometry in (y, x) order, ``delay`` and a ``neuron`` dict. Findings carry a ``rule``:

* ``structure``: the stock loader raises, or builds a different network (unknown types are
  skipped silently, a dense layer after a conv without ``flatten`` fails to connect, ...).
* ``range``: a value the loader changes (float weights truncated by ``astype(int)``, dense weights
  altered by ``optimize_weight_bits``, delays clamped) or that exceeds a register width Lava's
  bit-accurate Loihi models declare (vth 17 bits, bias mantissa 13 bits, decays 12 bits).
* ``risk`` (warnings): loads and runs, but may overflow for some inputs, or relies on a value
  only Lava's Python models realise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.findings import Finding

# Layer types netx builds; types whose create_* raises; anything else is skipped silently.
BUILT_TYPES = ("input", "dense", "dense_rec", "conv", "flatten")
RAISING_TYPES = ("pool", "convT", "unpool", "average", "concat", "dense_comp")
CUBA_TYPES = ("CUBA", "LOIHI")          # -> lava LIF / LIFReset
OTHER_NEURON_TYPES = ("SDNN",)          # accepted by netx, not checked here (RF* too)

ACT_SHIFT = 6                           # LIF shifts a_in, bias_mant (bias_exp=6) and vth by 6 bits
STATE_LIMIT = 2 ** 23 - 1               # 24-bit u/v: v clips to +-STATE_LIMIT, u wraps
VTH_MAX = 2 ** 17 - 1                   # vth: unsigned 17-bit
BIAS_MIN, BIAS_MAX = -(2 ** 12), 2 ** 12 - 1   # bias_mant: signed 13-bit
DECAY_UNITY = 4096                      # decays are fractions of 4096
DELAY_MAX = 62
CONV_WEIGHT_MIN, CONV_WEIGHT_MAX = -256, 255   # Conv ignores weight_exp: the 8-bit mantissa + sign
NON_SPIKING_VTH = VTH_MAX               # an accumulator's threshold: unreachable within |v| <= 2^17-1


# ---- value conversions the stock loader applies ------------------------------------------
def stock_dense_weights(weight: np.ndarray) -> np.ndarray:
    """The integer weights a stock netx ``dense`` layer really applies to its input.

    netx passes the file's integers through its ``optimize_weight_bits`` (a left shift by
    ``scale_bits`` chosen from the extreme values, plus a precision search), Lava's Dense then
    clips to 8 bits per sign mode, truncates ``8 - num_weight_bits (+1 if mixed)`` low bits, and
    shifts the accumulated sum back by ``weight_exp``. Returns ``W_eff`` with ``a = W_eff @ s``;
    raises ValueError where netx fails or the result is not a fixed linear map.
    """
    w = np.asarray(weight).astype(np.int64)
    if w.size == 0:
        raise ValueError("empty weight matrix")
    hi, lo = int(w.max()), int(w.min())
    if (hi > 254 and lo < 0) or (lo < -256 and hi > 0):
        w = np.clip(w, -256, 254)          # netx clips mixed-sign matrices (and prints a warning)
        hi, lo = int(w.max()), int(w.min())
    if hi == 0 and lo == 0:
        raise ValueError("an all-zero weight matrix makes netx's optimize_weight_bits fail "
                         "(division by zero)")
    signed = 0
    if hi < 0:                                  # netx: inhibitory
        scale = -256.0 / lo
    elif lo >= 0:                               # excitatory
        scale = 255.0 / hi
    else:                                       # mixed
        signed = 1
        scale = min(127.0 / hi if hi > 0 else np.inf, -128.0 / lo)
    shift = int(np.floor(np.log2(scale))) + signed
    if shift < 0:
        raise ValueError(f"weights in [{lo}, {hi}] need a negative shift in netx's "
                         "optimize_weight_bits (undefined); keep |w| <= 255")
    n = 8
    while n > 0 and np.any(w % (2 ** n)):
        n -= 1
    n -= signed
    num_bits = 8 - shift - n
    shifted = w << shift
    # Lava Dense (fixed_pt) decides its own sign mode, clips to 8 bits, truncates low bits.
    mode = "exc" if shifted.min() >= 0 else "inh" if shifted.max() <= 0 else "mixed"
    mag = -shifted if mode == "inh" else shifted
    mag = np.clip(mag, -256 if mode == "mixed" else 0, 255)
    trunc = 8 - num_bits + (mode == "mixed")
    if trunc < 0:
        raise ValueError("netx's weight-bit count exceeds 8 for these weights")
    mag = (mag >> trunc) << trunc
    applied = -mag if mode == "inh" else mag
    if np.any(applied % (2 ** shift)):
        raise ValueError("the weights netx loads are not multiples of 2^weight_exp: the layer "
                         "would round its summed input")
    return applied >> shift


def conv_output_shape(in_chw, out_channels, kernel, stride, padding, dilation) -> tuple[int, ...]:
    """(C, H, W) of a conv layer from (y, x) geometry (PyTorch's formula; Lava's matches)."""
    _, h, w = in_chw
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
           for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation)]
    return (int(out_channels), *out)


def yx_pair(value) -> list[int] | None:
    """netx's reading of stride/padding/dilation: a scalar applies to both axes, else (y, x)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        return None
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size == 1:
        return [int(arr[0])] * 2
    if arr.size == 2:
        return [int(arr[0]), int(arr[1])]
    return None


def scalar_int(value) -> int | None:
    """One integer-valued number (any numeric dtype), else None: netx reads scalars with int()."""
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "iufb":
        return None
    v = float(arr.reshape(-1)[0])
    return int(v) if math.isfinite(v) and v == int(v) else None


def _is_int_valued(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iub" or (arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr)))
                                       and bool(np.all(arr == np.round(arr))))


# ---- the checker ---------------------------------------------------------------------------
class _Checker:
    def __init__(self, names):
        self.findings: list[Finding] = []
        self.names = names or []
        self.where = ""

    def at(self, i: int, type_: str) -> None:
        extra = f", {self.names[i]}" if i < len(self.names) and self.names[i] else ""
        self.where = f"layer {i} ({type_}{extra})"

    def add(self, kind: str, message: str, severity: str = "error") -> None:
        self.findings.append(Finding(kind, self.where, message, severity=severity))


def validate_netx_layers(layers: list[dict], names: list[str] | None = None,
                         input_message_bits: int = 0) -> list[Finding]:
    """Check layer dicts against everything the stock NetX loader accepts; never raises.

    ``names`` (optional) labels each layer with the mtdeploy node it stands for;
    ``input_message_bits`` is the ``Network(input_message_bits=...)`` the file is meant for
    (0: binary input spikes), used to bound the first layer's current.
    """
    c = _Checker(names)
    if not isinstance(layers, (list, tuple)) or not layers:
        c.add("structure", "the file holds no layers (/layer is empty)")
        return c.findings
    cur: tuple[int, ...] | None = None       # output shape (C,H,W or (N,)) of the last block
    spatial = False                          # the last block is a conv (or a 3-D input layer)
    blocks = 0
    flatten_pending = False
    in_max = 2 ** (input_message_bits - 1) - 1 if input_message_bits > 0 else 1
    for i, layer in enumerate(layers):
        type_ = _built_type(i, layer, c)
        if type_ is None:
            # Reported already; carry on from the shape it declares, so that the layers after
            # it are checked against it and not flagged for a mismatch it caused.
            cur, spatial = _declared_shape(layer, cur, spatial)
            continue
        if flatten_pending and type_ not in ("dense", "dense_rec"):
            c.add("structure", "a 'flatten' layer must be followed by a dense layer")
            flatten_pending = False
        shape = _shape(layer, c)
        if type_ == "input":
            if i != 0:
                c.add("structure", "an input layer after layer 0 restarts netx's input shape")
            if shape is None:
                c.add("structure", "an input layer needs 'shape' (C,H,W) or (N,)")
                continue
            cur, spatial = shape, len(shape) == 3
            if "neuron" in layer:
                blocks += 1
                c.add("risk", "an input block with a neuron leaves Network.inp unconnected (netx "
                              "drives input blocks through their bias); mtdeploy writes input "
                              "layers without a neuron", "warning")
                _check_neuron(layer["neuron"], c)
            continue
        if type_ == "flatten":
            if blocks and not spatial:
                c.add("structure", "flatten after a non-conv block: netx's transpose([2,1,0]) "
                                   "needs a 3-D (x,y,z) output")
            elif cur is not None and shape is not None and int(np.prod(shape)) != int(np.prod(cur)):
                c.add("structure", f"flatten shape {shape} does not hold the {int(np.prod(cur))} "
                                   "values of the layer before it")
            flatten_pending = True
            continue
        if type_ == "conv":
            cur = _check_conv(layer, c, shape, cur if spatial else None, blocks == 0 and cur is None,
                              in_max if blocks == 0 else 1)
            spatial = cur is not None
        else:   # dense, dense_rec
            if blocks and spatial and not flatten_pending:
                c.add("structure", "a dense layer after a conv needs a 'flatten' layer between "
                                   "them (netx connects (x,y,z) to a vector otherwise and fails)")
            cur = _check_dense(layer, c, shape, cur, type_ == "dense_rec",
                               in_max if blocks == 0 else 1)
            spatial = False
            flatten_pending = False
        blocks += 1
    if blocks == 0:
        c.where = ""
        c.add("structure", "no dense or conv layer: netx builds an empty network and fails")
    return c.findings


def _declared_shape(layer, cur, spatial):
    """(shape, spatial) a layer the loader does not build declares, else the current ones."""
    try:
        shape = tuple(int(s) for s in np.asarray(layer["shape"]).reshape(-1))
    except (KeyError, TypeError, ValueError):
        return cur, spatial
    return (shape, len(shape) == 3) if shape and min(shape) > 0 else (cur, spatial)


def _built_type(i: int, layer, c: _Checker) -> str | None:
    """Layer ``i``'s type when the stock loader builds it, else None with the finding why."""
    type_ = layer.get("type") if isinstance(layer, dict) else None
    c.at(i, type_ if isinstance(type_, str) else "?")
    if not isinstance(layer, dict):
        c.add("structure", "not a group")
        return None
    if not isinstance(type_, str):
        c.add("structure", "'type' is missing or not an ASCII string dataset (netx decodes "
                           "it as bytes; write it as S10)")
        return None
    if type_ in RAISING_TYPES:
        c.add("structure", f"type {type_!r} makes the stock loader raise NotImplementedError"
                           + ("; fold pooling into the next conv/dense weights" if
                              type_ in ("pool", "average") else ""))
        return None
    if type_ not in BUILT_TYPES:
        c.add("structure", f"unknown type {type_!r}: the stock loader skips it silently")
        return None
    return type_


def _shape(layer: dict, c: _Checker) -> tuple[int, ...] | None:
    if "shape" not in layer:
        return None
    arr = np.asarray(layer["shape"])
    if not _is_int_valued(arr) or arr.ndim != 1 or arr.size == 0 or np.any(arr < 1):
        c.add("structure", f"'shape' must be a 1-D array of positive integers, got {arr.tolist()}")
        return None
    return tuple(int(s) for s in arr)


def _finite_numbers(name: str, arr: np.ndarray, c: _Checker) -> bool:
    """A numeric array without NaN or infinity; else a structure finding (netx would cast
    such values to arbitrary integers)."""
    if arr.dtype.kind not in "iufb":
        c.add("structure", f"'{name}' has non-numeric dtype {arr.dtype}")
        return False
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        c.add("structure", f"'{name}' holds NaN or infinite values (non-finite {name})")
        return False
    return True


def _check_weight_values(w: np.ndarray, c: _Checker) -> bool:
    if not _finite_numbers("weight", w, c):
        return False
    if not _is_int_valued(w):
        c.add("range", "'weight' holds non-integers: netx reads it with astype(int) and truncates "
                       "(store the scaled integers)")
    return True


def _check_bias(layer, c: _Checker, shape, out_shape) -> np.ndarray | None:
    if "bias" not in layer:
        return None
    b = np.asarray(layer["bias"])
    if not _finite_numbers("bias", b, c):
        return None
    if not _is_int_valued(b):
        c.add("range", "'bias' holds non-integers: netx truncates it with astype(int)")
    if out_shape is not None and len(out_shape) == 3:
        whc = tuple(reversed(out_shape))
        if tuple(b.shape) not in ((out_shape[0],), whc):
            c.add("structure", f"conv 'bias' of shape {b.shape} is neither per channel "
                               f"({out_shape[0]},) nor per neuron in netx's (x,y,z) order {whc}")
    elif out_shape is not None and b.size not in (1, int(np.prod(out_shape))):
        c.add("structure", f"'bias' of shape {b.shape} does not fit {int(np.prod(out_shape))} neurons")
    bi = b.astype(np.int64)
    problem = bias_range_problem(bi)
    if problem:
        c.add("range", problem)
    return bi


def bias_range_problem(bias: np.ndarray) -> str | None:
    """Why an integer bias does not fit netx's bias mantissa, or None."""
    if bias.size and (bias.min() < BIAS_MIN or bias.max() > BIAS_MAX):
        return (f"bias in [{bias.min()}, {bias.max()}] exceeds the 13-bit bias mantissa "
                f"[{BIAS_MIN}, {BIAS_MAX}] (netx fixes bias_exp at 6; "
                "fewer input or weight bits shrink a first layer's integer bias)")
    return None


def _check_neuron(neuron, c: _Checker) -> dict | None:
    """Returns {'vth', 'idecay', 'vdecay'} for a checked CUBA neuron, else None."""
    if not isinstance(neuron, dict):
        c.add("structure", "'neuron' must be a group")
        return None
    ntype = neuron.get("type")
    if not isinstance(ntype, str):
        c.add("structure", "neuron 'type' is missing or not an ASCII string")
        return None
    if ntype in OTHER_NEURON_TYPES or "RF" in ntype:
        c.add("risk", f"neuron type {ntype!r} is accepted by netx but not checked by mtdeploy",
              "warning")
        return None
    if ntype not in CUBA_TYPES:
        c.add("structure", f"neuron type {ntype!r} is unknown to netx (it builds nothing and fails)")
        return None
    values = {}
    for key, lo, hi in (("vThMant", 0, VTH_MAX), ("iDecay", 0, DECAY_UNITY),
                        ("vDecay", 0, DECAY_UNITY)):
        if key not in neuron:
            c.add("structure", f"neuron '{key}' is missing (netx reads it unconditionally)")
            continue
        v = scalar_int(neuron[key])
        if v is None:
            c.add("structure", f"neuron '{key}' must be one integer (Lava's LIF takes scalar "
                               f"vth/du/dv), got {np.asarray(neuron[key]).tolist()}")
            continue
        if not lo <= v <= hi:
            what = {"vThMant": "the 17-bit threshold mantissa", "iDecay": "a current decay",
                    "vDecay": "a voltage decay"}[key]
            c.add("range", f"neuron {key}={v} is outside {what} range [{lo}, {hi}]")
        values[key] = v
    if values.get("iDecay") == 0:
        c.add("risk", "iDecay=0 gives Lava du=-1 (a persistent current) that only Lava's Python "
                      "model realises; Loihi's du is unsigned", "warning")
    if values.get("vDecay") == DECAY_UNITY:
        c.add("risk", "vDecay=4096 needs a 13-bit dv (Lava's Python model realises it; Loihi's dv "
                      "is 12-bit)", "warning")
    if "messageBits" in neuron and scalar_int(neuron["messageBits"]) not in (0, None):
        c.add("risk", "messageBits > 0 makes the next synapse expect graded input, but Lava's LIF "
                      "sends binary spikes", "warning")
    return values if len(values) == 3 else None


def _current_risk(c: _Checker, row_sums: np.ndarray, in_max: int, bias) -> None:
    """Warn where the worst-case input current could wrap Lava's 24-bit current state."""
    if row_sums.size == 0:
        return
    peak = float(row_sums.max()) * in_max
    if bias is not None and bias.size:
        peak += float(np.abs(bias).max())
    if peak > STATE_LIMIT >> ACT_SHIFT:
        c.add("risk", f"worst-case input current {peak:.0f} exceeds {STATE_LIMIT >> ACT_SHIFT}: "
                      "Lava's 24-bit current (a_in << 6) would wrap for such inputs", "warning")


def _check_dense(layer, c: _Checker, shape, cur, rec: bool, in_max: int):
    if shape is None:
        c.add("structure", "'shape' is missing")
        return None
    n_out = int(np.prod(shape))
    if "weight" not in layer:
        c.add("structure", "'weight' is missing")
        return (n_out,)
    w = layer["weight"]
    if isinstance(w, dict):
        c.add("risk", "complex weights (weight/real, weight/imag) are not checked by mtdeploy",
              "warning")
        return (n_out,)
    w = np.asarray(w)
    if not _check_weight_values(w, c):
        return (n_out,)
    if w.ndim == 1:
        if w.size % n_out:
            c.add("structure", f"1-D 'weight' of {w.size} values cannot be reshaped to ({n_out}, -1)")
            return (n_out,)
        w = w.reshape(n_out, -1)
    if w.ndim != 2 or w.shape[0] != n_out:
        c.add("structure", f"'weight' of shape {w.shape} does not match {n_out} output neurons "
                           "(netx expects (out, in))")
        return (n_out,)
    if cur is not None and w.shape[1] != int(np.prod(cur)):
        c.add("structure", f"'weight' reads {w.shape[1]} inputs but the layer before outputs "
                           f"{int(np.prod(cur))}")
    wi = w.astype(np.int64)
    to_check = [wi]
    if rec:
        if "weight_rec" not in layer:
            c.add("structure", "a dense_rec layer needs 'weight_rec'")
        else:
            wr = np.asarray(layer["weight_rec"]).astype(np.int64).reshape(n_out, -1)
            to_check = [np.hstack([wi, wr])]
    for mat in to_check:
        try:
            eff = stock_dense_weights(mat)
        except ValueError as exc:
            c.add("structure" if "fail" in str(exc) else "range", str(exc))
        else:
            changed = int(np.count_nonzero(eff != mat))
            if changed:
                k = np.flatnonzero(eff.reshape(-1) != mat.reshape(-1))[0]
                c.add("range", f"{changed} weight(s) change when netx optimises the weight bits "
                               f"(e.g. {mat.reshape(-1)[k]} -> {eff.reshape(-1)[k]}); dense weights "
                               "must fit the 8-bit mantissa after netx's shift")
    if "delay" in layer:
        d = np.asarray(layer["delay"])
        if not _is_int_valued(d) or (d.size and d.min() < 0):
            c.add("range", "'delay' must hold non-negative integers")
        elif d.size and d.max() > DELAY_MAX:
            c.add("range", f"delay {int(d.max())} > {DELAY_MAX}: netx clamps it")
        if d.ndim > 1 or (d.ndim == 1 and d.size not in (1, n_out, w.shape[1])):
            c.add("structure", f"'delay' of shape {d.shape} is neither per output nor per input")
    bias = _check_bias(layer, c, shape, (n_out,))
    if "neuron" in layer:
        _check_neuron(layer["neuron"], c)
    else:
        c.add("risk", "no 'neuron': netx builds a non-spiking accumulator with iDecay=0 (du=-1)",
              "warning")
    _current_risk(c, np.abs(wi).sum(1), in_max, bias)
    return (n_out,)


def _check_conv(layer, c: _Checker, shape, cur, first_without_input: bool, in_max: int):
    if shape is None or len(shape) != 3:
        c.add("structure", "a conv layer needs a 3-entry 'shape' (C,H,W)")
        return None
    if first_without_input:
        c.add("structure", "a conv first layer needs an 'input' layer with the input shape "
                           "(netx cannot infer it)")
    elif cur is None:
        c.add("structure", "a conv layer must follow a conv layer or a 3-D input layer")
    geometry = {}
    for key in ("stride", "padding", "dilation"):
        if key not in layer:
            c.add("structure", f"'{key}' is missing (netx reads it unconditionally)")
            return shape
        yx = yx_pair(layer[key])
        if yx is None or min(yx) < (0 if key == "padding" else 1):
            c.add("structure", f"'{key}' must be an integer or (y, x) pair, got "
                               f"{np.asarray(layer[key]).tolist()}")
            return shape
        geometry[key] = yx
    groups = scalar_int(layer.get("groups")) if "groups" in layer else None
    if "groups" not in layer:
        c.add("structure", "'groups' is missing (netx reads it unconditionally)")
        return shape
    if groups is None or groups < 1:
        c.add("structure", "'groups' must be a positive integer")
        return shape
    if "weight" not in layer:
        c.add("structure", "'weight' is missing")
        return shape
    w = np.asarray(layer["weight"])
    if not _check_weight_values(w, c):
        return shape
    if w.ndim < 4 or any(s != 1 for s in w.shape[4:]):
        c.add("structure", f"conv 'weight' of shape {w.shape} is not (out, in/groups, kh, kw)")
        return shape
    w = w.reshape(w.shape[:4])
    if w.shape[0] != shape[0]:
        c.add("structure", f"'weight' has {w.shape[0]} output channels, 'shape' {shape[0]}")
    if shape[0] % groups:
        c.add("structure", f"{shape[0]} output channels are not divisible by groups={groups}")
    if cur is not None:
        if w.shape[1] * groups != cur[0]:
            c.add("structure", f"'weight' reads {w.shape[1] * groups} input channels, the layer "
                               f"before outputs {cur[0]}")
        expect = conv_output_shape(cur, shape[0], w.shape[2:], geometry["stride"],
                                   geometry["padding"], geometry["dilation"])
        if tuple(expect) != tuple(shape):
            c.add("structure", f"'shape' {shape} differs from the conv's output {expect} for "
                               f"input {cur}")
    wi = w.astype(np.int64)
    if wi.size and (wi.min() < CONV_WEIGHT_MIN or wi.max() > CONV_WEIGHT_MAX):
        c.add("range", f"conv weights in [{wi.min()}, {wi.max()}] exceed the 8-bit mantissa "
                       f"[{CONV_WEIGHT_MIN}, {CONV_WEIGHT_MAX}] (netx's Conv ignores exponents)")
    if "delay" in layer:
        c.add("risk", "netx ignores 'delay' on conv layers", "warning")
    bias = _check_bias(layer, c, shape, shape)
    if "neuron" not in layer:
        c.add("structure", "a conv layer needs a 'neuron' group (netx reads it unconditionally)")
    else:
        _check_neuron(layer["neuron"], c)
    _current_risk(c, np.abs(wi).reshape(wi.shape[0], -1).sum(1), in_max, bias)
    return shape


# ---- files -----------------------------------------------------------------------------------
def _read_node(obj) -> Any:
    """An h5py group/dataset as plain Python: groups -> dicts, strings decoded, arrays as numpy."""
    if isinstance(obj, h5py.Group):
        return {k: _read_node(obj[k]) for k in obj.keys()}
    value = obj[()]
    if obj.dtype.kind in "SO" and np.size(value) == 1:
        first = value.reshape(-1)[0] if isinstance(value, np.ndarray) and value.size else value
        if isinstance(first, bytes):
            try:
                return first.decode("ascii")
            except UnicodeDecodeError:
                return first
        return first if isinstance(first, str) else value
    return value


def read_netx_layers(path) -> tuple[list[dict], dict | None]:
    """``(layers, extension)`` of a NetX file; InputError if it is not a readable NetX file.

    ``extension`` is the ``/mtdeploy`` group as a dict (None when absent). Layer keys must be
    "0".."n-1": netx iterates ``range(len(/layer))``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            if "layer" not in f or not isinstance(f["layer"], h5py.Group):
                raise InputError(f"{path}: not a NetX network (no /layer group)")
            keys = list(f["layer"].keys())
            expected = [str(i) for i in range(len(keys))]
            if sorted(keys, key=lambda k: (len(k), k)) != expected:
                raise InputError(f"{path}: /layer members must be numbered 0..{len(keys) - 1} "
                                 f"contiguously, found {sorted(keys)[:8]}")
            layers = []
            for k in expected:
                node = f["layer"][k]
                if not isinstance(node, h5py.Group):
                    raise InputError(f"{path}: /layer/{k} is not a group")
                layers.append(_read_node(node))
            ext = _read_node(f["mtdeploy"]) if "mtdeploy" in f else None
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"{path}: not a readable NetX HDF5 file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'})") from None
    if ext is not None and not isinstance(ext, dict):
        raise InputError(f"{path}: /mtdeploy must be a group")
    return layers, ext


def extension_text(ext: dict, key: str, path) -> str:
    """A string dataset of the extension group, as text."""
    raw = ext.get(key)
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw.item()
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise InputError(f"{path}: /mtdeploy/{key} is missing or not a string")
    return raw


def extension_json(ext: dict, key: str, path) -> Any:
    """A JSON document stored as a string dataset in the extension group."""
    try:
        return json.loads(extension_text(ext, key, path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: /mtdeploy/{key} is not valid JSON ({exc})") from None


def validate_netx_file(path, input_message_bits: int | None = None) -> list[Finding]:
    """Findings for a .net file; unreadable files are one ``structure`` finding, not an error.

    ``input_message_bits`` defaults to the value recorded in an mtdeploy extension (else 0).
    """
    try:
        layers, ext = read_netx_layers(path)
    except InputError as exc:
        return [Finding("structure", None, str(exc))]
    bits = input_message_bits
    if ext is not None:
        try:
            stock = extension_json(ext, "stock", path)
            bits = stock.get("input_message_bits", 0) if bits is None else bits
        except InputError as exc:
            return validate_netx_layers(layers, input_message_bits=bits or 0) + \
                [Finding("structure", "/mtdeploy", str(exc))]
    return validate_netx_layers(layers, input_message_bits=bits or 0)
