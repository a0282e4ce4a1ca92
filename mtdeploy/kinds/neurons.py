"""Populations and their neurons: ``qcfs`` (a QCFS activation, run as IF or TPP neurons),
``readout`` (the output accumulator), ``cuba`` (Loihi's CUBA LIF) and ``sdnn`` (lava-dl's
sigma-delta neurons, graded spikes), the last two read from NetX files.

A ``qcfs`` node's ``attrs["neuron"]`` names its neuron model in :data:`NEURONS`; each model is
defined once here with its dynamics (semantics §2 float, §3 fixed point; bit-exact with the
Lava ``fixed_pt`` processes) and its window. Tensors are time-major ``(T, N, *shape)`` float64;
in fixed point they hold integers (exact in float64 far beyond the 24-bit state), so one code
path serves both modes.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import NodeKind, register
from mtdeploy.kinds import rng
from mtdeploy.nn import QCFS
from mtdeploy.validate import integer, real

STATE_MIN, STATE_MAX = -(2 ** 23), 2 ** 23 - 1    # the 24-bit membrane of semantics §3

# Loihi's CUBA LIF as Lava's fixed_pt LIF computes it (lava.proc.lif, PyLifModelBitAcc).
DECAY_UNITY = 4096          # decays are fractions of 4096
ACT_SHIFT = 6               # LIF shifts a_in, bias_mant (bias_exp=6) and vth left by 6 bits
STATE_LIMIT = 2 ** 23 - 1   # 24-bit u/v: v clips to +-STATE_LIMIT, u wraps


def threshold_of(node, fixed_point: bool) -> float:
    return float(node.attrs["threshold_int"]) if fixed_point else float(node.params["threshold"])


#: a population's per-channel units (float64, (C,)): the real value of one integer unit of
#: channel c's current (per-channel quantization, semantics §3); absent where one unit
#: ``2^-attrs["exp"]`` serves the whole population
CHANNEL_UNIT = "channel_unit"


def int_thresholds(node):
    """(threshold_int, v_init_int) of a quantized population: numbers with one unit, else
    int64 arrays (C,), one per channel, ``max(1, round(th / u_c))`` and
    ``floor(v_init threshold_int + 1/2)`` (semantics §3)."""
    units = node.params.get(CHANNEL_UNIT)
    if units is None:
        return node.attrs["threshold_int"], node.attrs["v_init_int"]
    th = np.maximum(1, np.round(float(node.params["threshold"]) / np.asarray(units, np.float64)))
    return th.astype(np.int64), np.floor(node.attrs.get("v_init", 0.5) * th + 0.5).astype(np.int64)


def units_of(node):
    """The real value of one integer unit of each neuron's current, broadcastable to
    ``(N, *node.shape)``: a number with one unit per population, else the channel's, shaped
    (C, 1, ...)."""
    units = node.params.get(CHANNEL_UNIT)
    if units is None:
        return 2.0 ** -int(node.attrs["exp"])
    return unit_shaped(node, np.asarray(units, np.float64))


def unit_shaped(node, per_channel) -> np.ndarray:
    """A per-channel (C,) array shaped (C, 1, ...) to broadcast over ``node``'s neurons."""
    return np.asarray(per_channel).reshape(-1, *([1] * (len(node.shape) - 1)))


def _neuron_values(node, value, like: torch.Tensor, n: int):
    """A per-channel (C,) value as one float per neuron of a flattened (N, *shape) batch (a
    number stays a number)."""
    if np.ndim(value) == 0:
        return float(value)
    per = torch.as_tensor(unit_shaped(node, np.asarray(value, np.float64)), dtype=like.dtype,
                          device=like.device)
    return per.expand(*node.shape).reshape(1, -1).expand(n, -1).reshape(-1)


# ---- neuron models of a qcfs population ---------------------------------------------------
#: Neurons stepped together on the CPU: one chunk's membrane, current and spikes stay in cache
#: over all T steps, so the loop costs a few cache-resident passes per step instead of
#: memory-bound ones.
CHUNK = 1 << 16


def over_chunks(m: int, like: torch.Tensor, work) -> None:
    """``work(i, j, mem, scratch)`` over [0, m) in CHUNK pieces, with two scratch tensors of
    ``like``'s type per thread. Each op runs single-threaded and the chunks are shared by as
    many Python threads as torch has intra-op threads: ops this small lose most of their time
    in intra-op barriers on a busy machine, chunks on their own threads wait for nobody. Off
    the CPU the whole range is one chunk (a device wants few large kernels)."""
    if like.device.type != "cpu":
        work(0, m, torch.empty(m, dtype=like.dtype, device=like.device),
             torch.empty(m, dtype=like.dtype, device=like.device))
        return
    spans = [(i, min(i + CHUNK, m)) for i in range(0, m, CHUNK)]
    threads = max(1, min(torch.get_num_threads(), len(spans)))
    size = min(m, CHUNK)

    def worker(k: int) -> None:
        mem, scratch = torch.empty(size, dtype=like.dtype), torch.empty(size, dtype=like.dtype)
        for i, j in spans[k::threads]:
            work(i, j, mem, scratch)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threads == 1:
            worker(0)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(worker, range(threads)))
    finally:
        torch.set_num_threads(before)


@dataclass
class Spikes:
    """A population's output: per step ``(T, N, ...)`` in the mode's units (th * spikes in
    float, spikes in fixed point), None when only the totals were asked for; the spike count
    per neuron ``(N, ...)``; and ``unit``, the value of one spike (so a step sum is
    ``count * unit``, exactly)."""

    steps: torch.Tensor | None
    count: torch.Tensor
    unit: float


class NeuronModel:
    name: ClassVar[str]
    description: ClassVar[str]
    window_factor: ClassVar[int] = 1      # the window is window_factor * T steps

    def run(self, node, current: torch.Tensor, fixed_point: bool, ctx,
            steps: bool = True) -> Spikes:
        """The dynamics over time-major ``current`` (T, N, ...); ``steps=False`` when the
        caller needs only the counts (an avg-repeat consumer), which saves the T-step output."""
        raise NotImplementedError

    def simulate(self, node, current: torch.Tensor, fixed_point: bool, ctx) -> torch.Tensor:
        return self.run(node, current, fixed_point, ctx).steps

    def closed_form(self, node, current_int: torch.Tensor) -> torch.Tensor:
        raise InputError(f"{node.label()}: {self.name} neurons have no closed form; the equally "
                         "quantized ANN exists only for IF neurons")


def _flat_steps(current: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(steps, m) view of a time-major current, and whether it is steady: a stride-0 current
    (avg-repeat) is its one step, read on every step."""
    if current.shape[0] > 1 and current.stride(0) == 0:
        return current[0].reshape(1, -1), True
    return current.reshape(current.shape[0], -1), current.shape[0] == 1


class IntegrateAndFire(NeuronModel):
    """m(t) = v(t-1) + I(t); s(t) = [m(t) >= th]; v(t) = m(t) - th s(t); v(0) = v_init * th.
    Output: spikes (fixed point) or th * spikes (float)."""

    name = "if"
    description = "integrate-and-fire, reset by subtraction (QCFS's exact SNN form)"

    def run(self, node, current, fixed_point, ctx, steps=True):
        if fixed_point:     # per-neuron integers under per-channel units (semantics §3)
            th, v0 = (_neuron_values(node, v, current, current.shape[1])
                      for v in int_thresholds(node))
        else:
            th = threshold_of(node, False)
            v0 = node.attrs.get("v_init", 0.5) * th
        t_steps, shape = current.shape[0], current.shape[1:]
        flat, steady = _flat_steps(current)
        like = {"dtype": current.dtype, "device": current.device}
        count = torch.zeros(flat.shape[1], **like)
        out = torch.empty((t_steps, flat.shape[1]), **like) if steps else None

        def step_chunk(i: int, j: int, mem: torch.Tensor, scratch: torch.Tensor) -> None:
            chunk, cnt = flat[:, i:j], count[i:j]
            th_c = th if isinstance(th, float) else th[i:j]
            mem = mem[:j - i].fill_(v0) if isinstance(v0, float) else mem[:j - i].copy_(v0[i:j])
            clamp = fixed_point and _may_saturate(chunk, t_steps, v0, th)
            for t in range(t_steps):
                mem.add_(chunk[0 if steady else t])
                spikes = torch.ge(mem, th_c, out=scratch[:j - i] if out is None else out[t, i:j])
                if isinstance(th_c, float):
                    mem.sub_(spikes, alpha=th_c)
                else:
                    mem.addcmul_(spikes, th_c, value=-1)
                if clamp:
                    mem.clamp_(STATE_MIN, STATE_MAX)
                cnt.add_(spikes)

        over_chunks(flat.shape[1], current, step_chunk)
        if out is not None and not fixed_point:
            out.mul_(th)
        return Spikes(None if out is None else out.reshape(t_steps, *shape),
                      count.reshape(shape), 1.0 if fixed_point else th)

    def closed_form(self, node, current_int):
        """Spikes under a constant integer current for T steps: clip(floor((T I + v0)/th), 0, T)."""
        th, v0 = (torch.as_tensor(unit_shaped(node, v) if np.ndim(v) else float(v),
                                  dtype=current_int.dtype, device=current_int.device)
                  for v in int_thresholds(node))
        t = node.T
        return torch.clamp(torch.floor((t * current_int + v0) / th), 0, t)


def _may_saturate(chunk: torch.Tensor, t_steps: int, v0, th) -> bool:
    """Whether the 24-bit state can leave its range: not when |v0| + T max|I| + th stays
    inside it, and then the clamp is the identity and is skipped (checked, not assumed)."""
    if not chunk.numel():
        return False
    low, high = torch.aminmax(chunk)
    v0, th = (float(v.abs().max()) if isinstance(v, torch.Tensor) else abs(v) for v in (v0, th))
    return max(-float(low), float(high)) * t_steps + v0 + th > STATE_MAX


class TwoPhaseProbabilistic(NeuronModel):
    """Accumulate for T steps, then fire for T steps. Phase 2, step k = 1..T:
    p = clip(v / (th (T - k + 1)), 0, 1); s ~ Bernoulli(p); v -= th s. (The remaining charge
    over the remaining steps' capacity: the expected count is v/th clipped to T, and the last
    step fires whenever v >= th remains.) Draws come from :mod:`mtdeploy.kinds.rng`."""

    name = "tpp"
    description = "two-phase probabilistic (accumulate T steps, then fire T steps)"
    window_factor = 2

    def run(self, node, current, fixed_point, ctx, steps=True):
        # float64 throughout: the fixed-point test r (T-k+1) th < v 2^24 outgrows 24 bits.
        current = current.to(torch.float64)
        th = threshold_of(node, fixed_point)
        if fixed_point and np.ndim(int_thresholds(node)[0]):    # per-channel units
            th = torch.as_tensor(unit_shaped(node, int_thresholds(node)[0]), dtype=torch.float64,
                                 device=current.device)
        t_steps = current.shape[0]
        v = current.sum(0)
        neuron = np.arange(int(np.prod(v.shape[1:])), dtype=np.int64)
        samples = np.asarray(ctx["sample_ids"], dtype=np.int64)[:, None]
        out = torch.empty_like(current)
        for k in range(1, t_steps + 1):
            r = torch.from_numpy(rng.uniform_int(ctx["seed"], node.name, samples, k, neuron[None, :])
                                 ).reshape(v.shape).to(current.device, current.dtype)
            remaining = t_steps - k + 1
            if fixed_point:
                s = (r * (remaining * th) < v * float(2 ** rng.UNIFORM_BITS)).to(current.dtype)
            else:
                p = torch.clamp(v / (th * remaining), 0.0, 1.0)
                s = (r / float(2 ** rng.UNIFORM_BITS) < p).to(current.dtype)
            v = v - th * s
            out[k - 1] = s
        count = out.sum(0)
        unit = 1.0 if fixed_point else th
        if not fixed_point:
            out.mul_(th)
        return Spikes(out if steps else None, count, unit)


NEURONS: dict[str, NeuronModel] = {m.name: m for m in (IntegrateAndFire(), TwoPhaseProbabilistic())}


def neuron_of(node) -> NeuronModel:
    name = node.attrs.get("neuron", "if")
    try:
        return NEURONS[name]
    except KeyError:
        raise InputError(f"{node.label()}: unknown neuron model {name!r}; known: "
                         f"{', '.join(NEURONS)}") from None


# ---- population kinds -------------------------------------------------------------------
@register
class QCFSKind(NodeKind):
    name = "qcfs"
    role = "activation"
    torch_types = (QCFS,)
    description = "QCFS activation; becomes a population of spiking neurons with T = levels"

    def from_torch(self, m):
        levels, threshold = _checked_qcfs(m.levels, m.threshold)
        return {"levels": levels}, {"threshold": np.asarray(threshold, np.float32)}

    def from_script(self, sm):
        levels = sm.levels if hasattr(sm, "levels") else None
        levels, threshold = _checked_qcfs(levels, sm.threshold)
        if levels is None:
            levels = _probe_qcfs_levels(sm, threshold)
        eager = QCFS(levels, threshold)
        eager.load_state_dict(sm.state_dict())
        return eager.eval()

    def to_module(self, node):
        return QCFS(int(node.attrs["levels"]), float(node.params["threshold"]))

    def write_back(self, module, node):
        node.attrs["levels"] = int(module.levels)
        node.params["threshold"] = np.asarray(float(module.threshold), np.float32)

    def forward(self, node, x):
        lam = float(node.params["threshold"])
        levels = node.attrs["levels"]
        return torch.clamp(torch.floor(x * (levels / lam) + 0.5), 0, levels) * (lam / levels)

    def simulate(self, node, current, fixed_point, ctx):
        return neuron_of(node).simulate(node, current, fixed_point, ctx)

    def run(self, node, current, fixed_point, ctx, steps=True) -> Spikes:
        """:meth:`simulate` with the spike counts, the per-step output only if ``steps``."""
        return neuron_of(node).run(node, current, fixed_point, ctx, steps)

    def closed_form(self, node, current_int):
        return neuron_of(node).closed_form(node, current_int)

    def window_length(self, node):
        return neuron_of(node).window_factor * int(node.T)


def _checked_qcfs(levels, threshold) -> tuple[int | None, float]:
    """(levels, threshold) of a QCFS module, refused unless levels is an integer >= 1 and the
    threshold a finite number > 0 (a pickled module can hold anything; int() would truncate
    2.5 levels to 2 and a zero threshold divides by zero in quantization)."""
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.item() if threshold.numel() == 1 else threshold.tolist()
    threshold = real("QCFS threshold", threshold, 0.0, lo_open=True)
    if levels is not None:
        levels = integer("QCFS levels", levels, 1)
    return levels, threshold


MAX_LEVELS = 4096   # T = levels steps; a traced QCFS's levels are probed up to this many


def _probe_qcfs_levels(sm, threshold: float) -> int:
    """A traced QCFS keeps ``levels`` only as a baked constant; count its output steps instead.

    The output takes the values k*threshold/levels, k = 0..levels; a grid finer than any step
    between -0.25 and 1.25 thresholds visits all of them for levels up to ~10^4. The count is
    then checked against that ladder, so a QCFS with more levels than the grid resolves (or
    with non-integer levels) is refused rather than read as a smaller T.
    """
    grid = torch.linspace(-0.25, 1.25, 2 ** 14 + 1, dtype=torch.float64) * threshold
    with torch.no_grad():
        out = sm._c._get_method("forward")(grid.to(torch.float32).view(1, -1, 1, 1))
    values = torch.unique(out).to(torch.float64)
    levels = int(values.numel()) - 1
    ladder = torch.arange(levels + 1, dtype=torch.float64) * (threshold / max(levels, 1))
    if not 1 <= levels <= MAX_LEVELS or not torch.allclose(values, ladder, rtol=1e-4,
                                                             atol=1e-6 * threshold):
        raise InputError(f"cannot read the levels of a traced QCFS: its outputs are not k * "
                         f"threshold / L for one integer L in [1, {MAX_LEVELS}] (non-integer "
                         "levels, or more levels than the probe resolves; torch.jit.script keeps "
                         "the levels exactly)")
    return levels


@register
class ReadoutKind(NodeKind):
    name = "readout"
    role = "readout"
    description = ("the output population: accumulates the last layer's current over its window; "
                   "its value is the mean current, in the ANN's logit units")

    def forward(self, node, x):
        return x                     # the ANN view: the logits themselves

    def simulate(self, node, current, fixed_point, ctx):
        """Mean current over the window, in the ANN's units: shape (1, N, ...). Summed in
        float64 (a fixed-point current may arrive as exact float32 integers); a steady current
        (stride 0 in time) is its own mean."""
        if current.shape[0] > 1 and current.stride(0) == 0:
            mean = current[0].to(torch.float64)
        else:
            mean = current.to(torch.float64).sum(0) / current.shape[0]
        if fixed_point:
            units = units_of(node)
            mean = mean * (units if np.ndim(units) == 0 else
                           torch.as_tensor(units, device=mean.device))
        return mean.unsqueeze(0)

    def closed_form(self, node, current_int):
        return self.simulate(node, current_int[None], True, {})[0]


@register
class CubaKind(NodeKind):
    name = "cuba"
    role = "activation"
    description = ("a Loihi CUBA LIF population as NetX/Lava define it (read from NetX files): "
                   "decays in 1/4096, reset to zero, spikes when v > vThMant; bit-exact with "
                   "Lava's fixed_pt LIF")

    def simulate(self, node, current, fixed_point, ctx):
        """Lava's fixed_pt LIF from rest, in Lava's 2^6-scaled units.

        u = decay(u, iDecay) + (a << 6), wrapping at 24 bits; v = decay(v, vDecay) + u +
        (bias << 6), clipped to +-(2^23 - 1); spike when v > vThMant << 6, then v = 0.
        ``current`` is the synaptic input a (T, N, ...); returns spikes (T, N, ...).
        """
        current = current.to(torch.float64)     # the 2^6-scaled state outgrows float32
        a = node.attrs
        keep_u, keep_v = DECAY_UNITY - int(a["iDecay"]), DECAY_UNITY - int(a["vDecay"])
        scale = float(2 ** ACT_SHIFT)
        bias = torch.as_tensor(np.asarray(node.params["bias_mant"]), dtype=current.dtype,
                               device=current.device) * scale
        vth = float(int(a["vThMant"]) << ACT_SHIFT)
        wrap, limit = float(2 ** 23), float(STATE_LIMIT)
        u = torch.zeros(current.shape[1:], dtype=current.dtype, device=current.device)
        v = torch.zeros_like(u)
        out = torch.empty_like(current)
        for t in range(current.shape[0]):
            u = _decay(u, keep_u) + current[t] * scale
            u = torch.where(u > wrap, u - 2 * wrap, u)
            u = torch.where(u <= -wrap, u + 2 * wrap, u)
            v = (_decay(v, keep_v) + u + bias).clamp(-limit, limit)
            s = v > vth
            v = torch.where(s, torch.zeros_like(v), v)
            out[t] = s.to(current.dtype)
        return out

    def closed_form(self, node, current_int):
        raise InputError(f"{node.label()}: a CUBA LIF population has no closed form; simulate it")


def _decay(x: torch.Tensor, keep: int) -> torch.Tensor:
    """Lava's sign-magnitude decay: sign(x) * ((|x| * keep) >> 12)."""
    return torch.sign(x) * torch.floor(x.abs() * keep / DECAY_UNITY)


# ---- sigma-delta (lava-dl SDNN) ---------------------------------------------------------
SDNN_SPIKE_EXP = 6   # netx's spike_exp: a graded spike carries its value << 6
SDNN_STATE_EXP = 6   # netx's state_exp: thresholds and biases are held << 6 more
SDNN_MODES = ("delta", "sigma-delta", "sigma")
SDNN_STATE = ("sigma", "act", "residue")   # what a window starts from (params <name>_init)


@register
class SigmaDeltaKind(NodeKind):
    """A sigma-delta population as lava-dl netx builds it for an ``SDNN`` neuron group.

    ``attrs["mode"]``: ``delta`` (an input layer's neuron: Lava's Delta), ``sigma-delta`` (a
    hidden layer: SigmaDelta with ReLU, netx's only activation) or ``sigma`` (a layer with
    ``sigma_output``: Sigma, which sends its running sum). Spikes are graded: an integer
    payload per step, zero when silent.

    netx cannot reset sigma-delta neurons: every block runs from the stream's first step, so
    one that a sample reaches ``attrs["prelude"]`` steps later has by then integrated its bias
    and its producers' bias-driven output. That state does not depend on the sample; the NetX
    reader computes it (params ``sigma_init``, ``act_init``, ``residue_init``) and each window
    starts from it, which is what a stock run shows for a sample entering a fresh network.
    """

    name = "sdnn"
    role = "activation"
    graded = True
    spike_exp, state_exp, state = SDNN_SPIKE_EXP, SDNN_STATE_EXP, SDNN_STATE
    description = ("a lava-dl sigma-delta (SDNN) population read from NetX files: graded spikes; "
                   "bit-exact with Lava's fixed_pt Delta / SigmaDelta (ReLU) / Sigma")

    def simulate(self, node, current, fixed_point, ctx):
        """The payloads (T, N, ...) for the synaptic input ``current`` (T, N, ...), from the
        state in ``params`` (``sigma_init``, ``act_init``, ``residue_init``; zero if absent)."""
        init = {k: np.asarray(node.params[f"{k}_init"]) for k in SDNN_STATE
                if f"{k}_init" in node.params}
        return self.run_state(node, current, init)[0]

    def run_state(self, node, current, init: dict | None = None):
        """Lava's fixed_pt models step by step, in their units; -> (payloads, final state).

        delta: x = a << 12; d = x - x_prev + r. sigma-delta: sigma += a; x = relu(sigma +
        (bias << 12)); d = x - x_prev + r. Both send s = d where |d| >= vThMant << 12 (else 0)
        as s >> 6 and keep r = d - s. sigma: sends sigma += a. ``init`` maps ``sigma``,
        ``act``, ``residue`` to per-neuron starting values (Lava's scaled units).
        """
        a = current.to(torch.float64)
        mode = node.attrs["mode"]
        out = torch.empty_like(a)
        state = {k: torch.as_tensor(np.asarray((init or {}).get(k, 0.0), np.float64),
                                    dtype=a.dtype, device=a.device).expand(a.shape[1:]).clone()
                 for k in SDNN_STATE}
        sigma, act, residue = (state[k] for k in SDNN_STATE)
        scale = float(2 ** (SDNN_SPIKE_EXP + SDNN_STATE_EXP))
        vth = float(int(node.attrs.get("vThMant", 0))) * scale
        bias = torch.as_tensor(np.asarray(node.params["bias_mant"]), dtype=a.dtype,
                               device=a.device) * scale
        for t in range(a.shape[0]):
            if mode == "sigma":
                sigma = sigma + a[t]
                out[t] = sigma
                continue
            if mode == "delta":
                x = a[t] * scale
            else:
                sigma = sigma + a[t]
                x = torch.clamp(sigma + bias, min=0.0)
            delta = x - act + residue
            s = torch.where(delta.abs() >= vth, delta, torch.zeros_like(delta))
            residue, act = delta - s, x
            out[t] = torch.floor(s / float(2 ** SDNN_STATE_EXP))
        return out, {"sigma": sigma, "act": act, "residue": residue}

    def closed_form(self, node, current_int):
        raise InputError(f"{node.label()}: a sigma-delta population has no closed form; "
                         "simulate it")
