"""Population and alignment dynamics, step by step (docs/semantics.md §2, §3).

Tensors are time-major ``(T, N, *shape)`` float64; in fixed-point mode they hold integers
(exact in float64 far beyond the 24-bit state), so one code path serves both modes.
"""
from __future__ import annotations

import numpy as np
import torch

from mtdeploy.ir.graph import Node
from mtdeploy.sim import rng

STATE_MIN, STATE_MAX = -(2 ** 23), 2 ** 23 - 1


def ttm_boundaries(t_more: int, t_fewer: int) -> list[int]:
    """MTT's group boundaries b_k = round(k * T_more / T_fewer), k = 0..T_fewer."""
    return [int(round(k * t_more / t_fewer)) for k in range(t_fewer + 1)]


def align(node: Node, x: torch.Tensor, fixed_point: bool) -> torch.Tensor:
    a = node.attrs
    t_in, t_out, method = a["t_in"], a["t_out"], a["method"]
    if x.shape[0] != t_in:
        raise ValueError(f"{node.name}: expected {t_in} input steps, got {x.shape[0]}")
    if method == "avg-repeat":
        acc = x.sum(0) if fixed_point else x.mean(0)
        return acc.unsqueeze(0).expand(t_out, *acc.shape).clone()
    if method == "ttm":
        if t_in == t_out:
            return x.clone()
        if t_in > t_out:   # down-sample: sum each group
            b = ttm_boundaries(t_in, t_out)
            out = torch.stack([x[b[k]:b[k + 1]].sum(0) for k in range(t_out)])
            return out if fixed_point else out * (t_out / t_in)
        b = ttm_boundaries(t_out, t_in)   # up-sample: replicate each step over its group
        index = torch.tensor([k for k in range(t_in) for _ in range(b[k + 1] - b[k])])
        return x[index].clone()
    raise ValueError(f"{node.name}: unknown alignment method {method!r}")


def _threshold(node: Node, fixed_point: bool) -> float:
    return float(node.attrs["threshold_int"]) if fixed_point else float(node.params["threshold"])


def integrate_and_fire(node: Node, current: torch.Tensor, fixed_point: bool, ctx) -> torch.Tensor:
    """IF with reset by subtraction; output = spikes (fixed) or threshold * spikes (float)."""
    th = _threshold(node, fixed_point)
    v0 = float(node.attrs["v_init_int"]) if fixed_point else node.attrs.get("v_init", 0.5) * th
    v = torch.full(current.shape[1:], v0, dtype=current.dtype)
    out = torch.empty_like(current)
    for t in range(current.shape[0]):
        m = v + current[t]
        s = (m >= th).to(current.dtype)
        v = m - th * s
        if fixed_point:
            v = v.clamp(STATE_MIN, STATE_MAX)
        out[t] = s if fixed_point else s * th
    return out


def if_count_closed_form(node: Node, current_int: torch.Tensor) -> torch.Tensor:
    """Spikes of the fixed-point IF under a constant integer current for T steps."""
    th = float(node.attrs["threshold_int"])
    t = node.T
    return torch.clamp(torch.floor((t * current_int + node.attrs["v_init_int"]) / th), 0, t)


def tpp(node: Node, current: torch.Tensor, fixed_point: bool, ctx) -> torch.Tensor:
    """Two-phase probabilistic neuron: accumulate for T steps, then fire for T steps.

    Phase 2, step k = 1..T: p = clip(v / (th * (T - k + 1)), 0, 1); s ~ Bernoulli(p); v -= th*s.
    (Firing probability = remaining charge over the remaining steps' capacity, so the expected
    count is v/th clipped to T and the last step fires whenever v >= th remains.)
    """
    th = _threshold(node, fixed_point)
    t_steps = current.shape[0]
    v = current.sum(0)
    n = v.shape[0]
    neuron = np.arange(int(np.prod(v.shape[1:])), dtype=np.int64)
    samples = np.asarray(ctx["sample_ids"], dtype=np.int64)[:, None]
    out = torch.empty_like(current)
    for k in range(1, t_steps + 1):
        r = torch.from_numpy(rng.uniform_int(ctx["seed"], node.name, samples, k, neuron[None, :])
                             ).reshape(v.shape).to(current.dtype)
        remaining = t_steps - k + 1
        if fixed_point:
            s = (r * (remaining * th) < v * float(2 ** rng.UNIFORM_BITS)).to(current.dtype)
        else:
            p = torch.clamp(v / (th * remaining), 0.0, 1.0)
            s = (r / float(2 ** rng.UNIFORM_BITS) < p).to(current.dtype)
        v = v - th * s
        out[k - 1] = s if fixed_point else s * th
    del n
    return out


def readout(node: Node, current: torch.Tensor, fixed_point: bool) -> torch.Tensor:
    """Mean current over the window, in the ANN's units: shape (1, N, ...)."""
    steps = current.shape[0]
    mean = current.sum(0) / steps
    if fixed_point:
        mean = mean * 2.0 ** -node.attrs["exp"]
    return mean.unsqueeze(0)
