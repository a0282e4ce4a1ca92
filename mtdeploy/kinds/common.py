"""Helpers the kind files share: array conversion, sliding-window boxes, TorchScript options."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mtdeploy.errors import InputError


def pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def single(v) -> int:
    """A 1-D layer option given as ``k`` or ``(k,)``."""
    return int(v) if isinstance(v, int) else int(v[0])


def to_numpy(t: torch.Tensor | None, like_shape=None) -> np.ndarray:
    if t is None:
        return np.zeros(like_shape, dtype=np.float32)
    # one copy (astype then copy made two: 0.8 GB passing through for a VGG-16 classifier)
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, copy=True)


def to_tensor(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def window(lo, hi, k, s, p, d, n):
    """Input interval [lo', hi') read by output positions [lo, hi) of a sliding window."""
    new_lo = np.clip(lo * s - p, 0, n)
    new_hi = np.clip((hi - 1) * s - p + d * (k - 1) + 1, 0, n)
    return new_lo, np.maximum(new_hi, new_lo)


def row_gain(w, block: int = 2 ** 22) -> float | None:
    """Largest row sum of |w| over an output-first weight array (None: not quantized), summed
    a block of rows at a time (no float64 copy of a 100M-weight classifier layer)."""
    if w is None:
        return None
    w = np.asarray(w)
    rows = w.reshape(w.shape[0], -1)
    step = max(1, block // max(1, rows.shape[1]))
    # integers are summed as int64 (exact, as the float64 sums of them were): one copy, not two
    wide = np.int64 if w.dtype.kind in "iu" else np.float64
    return max((float(np.abs(rows[r:r + step], dtype=wide).sum(1).max(initial=0))
                for r in range(0, len(rows), step)), default=0.0)


def sliding_output(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def channels_and_sizes(node, in_shape, spatial: int) -> tuple[int, list[int]]:
    """(C, spatial sizes) of a (C, *sizes) input, checked to have ``spatial`` sizes."""
    c, *sizes = in_shape
    if len(sizes) != spatial:
        raise InputError(f"{node.label()}: expects a {spatial + 1}-D input per sample, got "
                         f"{tuple(in_shape)}")
    return c, sizes


# ---- reading a layer's options from a TorchScript submodule -------------------------------
class ScriptConfigError(Exception):
    """A TorchScript submodule's configuration could not be read."""


def script_constant(value: torch._C.Value) -> Any:
    """The compile-time value of a TorchScript graph value (constants and lists of them)."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [script_constant(v) for v in node.inputs()]
    raise ScriptConfigError(f"{node.kind()} is not a constant")


def traced_argument(sm: torch.jit.ScriptModule, op: str, index: int) -> Any:
    """The constant argument ``index`` that the traced forward passes to ``op``."""
    for node in sm.graph.nodes():
        if node.kind() == op:
            return script_constant(list(node.inputs())[index])
    raise ScriptConfigError(f"its forward has no {op} to read argument {index} from")


def script_option(sm: torch.jit.ScriptModule, attr: str, op: str, index: int) -> Any:
    """A layer option: a scripted module's attribute (``torch.jit.script`` keeps them), else the
    traced ``op``'s constant argument (``torch.jit.trace`` bakes options into the graph)."""
    if hasattr(sm, attr):
        return getattr(sm, attr)
    return traced_argument(sm, op, index)


def with_state(eager: nn.Module, sm: torch.jit.ScriptModule) -> nn.Module:
    eager.load_state_dict(sm.state_dict())
    return eager.eval()


def copy_weighted(module: nn.Module, weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(weight))
        module.bias.copy_(torch.as_tensor(bias))
    return module


def write_weighted(module: nn.Module, node) -> None:
    node.params["weight"] = to_numpy(module.weight)
    node.params["bias"] = to_numpy(module.bias)
