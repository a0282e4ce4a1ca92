"""Lava processes of an MT-SNN: populations, alignment, input and readout (docs/semantics.md).

Sample n enters at step ``n * period`` and every window of the schedule, ``[start, end)``, is
sample 0's: sample n's is ``[start + n * period, end + n * period)``. Each process reads Lava's
``time_step`` (1-based) relative to its window's start: ``k = (time_step - 1 - start)``, the
step inside the window ``k % period`` and the sample ``k // period``, and is active while the
step inside its window is below the window's length; outside it still receives and sends on
every port each step (a silent port deadlocks Lava) and sends zeros.

``period`` is the schedule's total steps (one sample after another) or, pipelined, its longest
window: then several samples are in flight at once, each population busy with a different one.
A population's windows never overlap (each is at most ``period`` long); an align process, whose
input and output windows together can span more than ``period``, keeps one accumulator per
sample in flight (``depth`` of them).

Shapes are Lava's layout: ``(W, H, C)`` for image-like tensors (what ``lava.proc.conv.Conv``
reads and writes), ``(n,)`` for vectors. Numbers passed in are already in the mode's units
(integers for ``fixed_pt``, floats for ``floating_pt``); the models in :mod:`.models` read them.

This folder holds only processes and models: Lava's compiler imports every module beside a
process's module when it looks for models, so no driver code lives here.
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.proc.sdn.process import Delta, Sigma, SigmaDelta


def _window(window, period: int | None = None) -> tuple[int, int]:
    start, end = (int(w) for w in window)
    if not 0 <= start < end:
        raise ValueError(f"window must satisfy 0 <= start < end, got {window}")
    if period is not None and end - start > int(period):
        raise ValueError(f"window {window} is longer than the sample period {period}")
    return start, end


def in_flight(first: int, last: int, period: int) -> int:
    """Samples whose span [first, last) overlaps at once when one enters every ``period``."""
    return max(1, -(-(int(last) - int(first)) // int(period)))


def _per_sample(shape, n_samples: int, record: bool) -> tuple[int, ...]:
    return (max(1, int(n_samples)) if record else 1, *shape)


class SampleSource(AbstractProcess):
    """Presents sample n's input ``data[n]`` once, at step ``n * period`` (graded values)."""

    def __init__(self, *, data: np.ndarray, period: int, name: str | None = None):
        data = np.asarray(data)
        super().__init__(period=int(period), name=name)
        self.s_out = OutPort(shape=data.shape[1:])
        self.data = Var(shape=data.shape, init=data)


class IFNeuron(AbstractProcess):
    """Integrate-and-fire, reset by subtraction, active in ``window`` of each sample period.

    ``threshold``/``v_init``/``bias`` are integers for the fixed-point model (24-bit saturating
    state; ``threshold``/``v_init`` one for all, or one per neuron under per-channel units) and
    real values for the float model. With ``reset`` the membrane is re-initialised to
    ``v_init`` at the window start of every sample. ``record`` keeps per-sample spike counts.
    """

    def __init__(self, *, shape, threshold, v_init, bias, window, period: int, n_samples: int = 1,
                 record: bool = False, reset: bool = True, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        start, end = _window(window, period)
        super().__init__(shape=shape, threshold=threshold, v_init=v_init, start=start, end=end,
                         period=int(period), reset=bool(reset), record=bool(record), name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=np.full(shape, v_init))
        self.bias = Var(shape=shape, init=np.broadcast_to(np.asarray(bias), shape).copy())
        self.counts = Var(shape=_per_sample(shape, n_samples, record), init=0)


class TPPNeuron(AbstractProcess):
    """Two-phase probabilistic neuron: accumulate for T steps, then fire for T steps.

    The Bernoulli draws come from :mod:`mtdeploy.kinds.rng` keyed by (seed, ``population``,
    sample index + ``sample_offset``, phase-2 step k, ``neuron_ids``): ``neuron_ids`` holds each
    Lava-layout neuron's flat index in the IR's (C, H, W) order, so the draws equal the
    reference simulator's.
    """

    def __init__(self, *, shape, threshold, bias, start: int, T: int, period: int, seed: int,
                 population: str, neuron_ids: np.ndarray, n_samples: int = 1,
                 sample_offset: int = 0, record: bool = False, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        start, _ = _window((start, start + 2 * int(T)), period)
        ids = np.asarray(neuron_ids, dtype=np.int64)
        if ids.shape != shape:
            raise ValueError(f"neuron_ids has shape {ids.shape}, expected {shape}")
        super().__init__(shape=shape, threshold=threshold, start=start, T=int(T),
                         period=int(period), seed=int(seed), population=str(population),
                         sample_offset=int(sample_offset), record=bool(record), name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0)
        self.bias = Var(shape=shape, init=np.broadcast_to(np.asarray(bias), shape).copy())
        self.neuron_ids = Var(shape=shape, init=ids)
        self.counts = Var(shape=_per_sample(shape, n_samples, record), init=0)


class AlignAvgRepeat(AbstractProcess):
    """Average-and-repeat after the synapse: sums the synaptic current arriving in ``in_window``
    and injects the sum every step of ``out_window`` (the 1/t_in lives in the weights); one
    sum per sample in flight."""

    def __init__(self, *, shape, in_window, out_window, period: int, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        a0, a1 = _window(in_window, period)
        b0, b1 = _window(out_window, period)
        if b0 < a1:
            raise ValueError(f"out_window {out_window} starts before in_window {in_window} ends")
        depth = in_flight(a0, b1, period)
        super().__init__(shape=shape, a0=a0, a1=a1, b0=b0, b1=b1, period=int(period),
                         depth=depth, name=name)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.acc = Var(shape=(depth, *shape), init=0)


def ttm_matrix(t_in: int, t_out: int) -> np.ndarray:
    """(t_out, t_in) 0/1 matrix: output step j sums (down) or copies (up) input steps.

    Boundaries b_k = round(k * T_more / T_fewer) with Python's ``round`` (semantics §2).
    """
    t_more, t_fewer = max(t_in, t_out), min(t_in, t_out)
    b = [int(round(k * t_more / t_fewer)) for k in range(t_fewer + 1)]
    m = np.zeros((t_out, t_in), dtype=np.int64)
    for k in range(t_fewer):
        for t in range(b[k], b[k + 1]):
            if t_in >= t_out:
                m[k, t] = 1      # down: group k of inputs sums into output k
            else:
                m[t, k] = 1      # up: input k repeats over output group k
    return m


class AlignTTM(AbstractProcess):
    """TTM after the synapse: buffers the t_in per-step currents arriving from ``in_start`` and
    emits ``ttm_matrix(t_in, t_out) @ buffer`` over the t_out steps from ``out_start``; one
    buffer per sample in flight."""

    def __init__(self, *, shape, in_start: int, t_in: int, out_start: int, t_out: int,
                 period: int, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        a0, a1 = _window((in_start, in_start + int(t_in)), period)
        b0, b1 = _window((out_start, out_start + int(t_out)), period)
        if b0 < a1:
            raise ValueError("TTM output window starts before its input window ends")
        mix = ttm_matrix(int(t_in), int(t_out))
        depth = in_flight(a0, b1, period)
        super().__init__(shape=shape, a0=a0, t_in=int(t_in), b0=b0, t_out=int(t_out),
                         period=int(period), depth=depth, name=name)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.buffer = Var(shape=(depth, int(t_in), *shape), init=0)
        self.mix = Var(shape=mix.shape, init=mix)


class DelayLine(AbstractProcess):
    """Delays a current stream by ``delay`` steps (a FIFO; on Loihi, a synaptic delay).

    A streamed edge (no align node) needs it when its consumer starts later than one hop after
    the producer's first output step, because another input of the consumer arrives later.
    """

    def __init__(self, *, shape, delay: int, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        if int(delay) < 1:
            raise ValueError(f"delay must be >= 1, got {delay}")
        super().__init__(shape=shape, delay=int(delay), name=name)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.fifo = Var(shape=(int(delay), *shape), init=0)


class PartialSum(AbstractProcess):
    """A partial-sum stage of a split fan-in (targets/fanin.py): non-spiking compartments, one
    per consumer neuron, that receive one block's share of the consumer's synaptic current and
    forward it, as a graded message, one step (one hop) later; the consumer's input port adds
    the stages' messages."""

    def __init__(self, *, shape, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        super().__init__(shape=shape, delay=1, name=name)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.fifo = Var(shape=(1, *shape), init=0)


class MaxPool(AbstractProcess):
    """Max pooling of integer counts, in the step it receives them: (W, H, C) in, (W', H', C)
    out, windows of ``kernel`` every ``stride`` over the map padded by ``padding`` (pads never
    win: every window holds at least one real element), times ``gain`` (the gain on the pool's
    input: a max commutes with it). Sits behind an avg-repeat align
    process, whose output is each producer neuron's spike count (docs/semantics.md)."""

    def __init__(self, *, in_shape, out_shape, kernel, stride, padding, gain: int = 1,
                 name: str | None = None):
        in_shape, out_shape = (tuple(int(s) for s in x) for x in (in_shape, out_shape))
        if int(gain) < 0:
            raise ValueError(f"a max commutes only with a non-negative gain, got {gain}")
        super().__init__(kernel=[int(k) for k in kernel], stride=[int(s) for s in stride],
                         padding=[int(p) for p in padding], gain=int(gain), name=name)
        self.a_in = InPort(shape=in_shape)
        self.a_out = OutPort(shape=out_shape)


class Readout(AbstractProcess):
    """Accumulates its input current plus ``bias`` over ``window``; stores sample n's sum in
    ``result[n]`` at the window's last step (host converts to ANN units)."""

    def __init__(self, *, shape, bias, window, period: int, n_samples: int,
                 name: str | None = None):
        shape = tuple(int(s) for s in shape)
        start, end = _window(window, period)
        super().__init__(shape=shape, start=start, end=end, period=int(period), name=name)
        self.a_in = InPort(shape=shape)
        self.acc = Var(shape=shape, init=0)
        self.bias = Var(shape=shape, init=np.broadcast_to(np.asarray(bias), shape).copy())
        self.result = Var(shape=(max(1, int(n_samples)), *shape), init=0)


class WindowDelay(AbstractProcess):
    """Synaptic delays per neuron inside a window (a NetX dense layer's ``delay``): at window
    step k it sends what it received at step k - d (zero before the window); it sends zeros
    outside the window, so nothing delayed past a window reaches another sample's."""

    def __init__(self, *, shape, delays, window, period: int, name: str | None = None):
        shape = tuple(int(s) for s in shape)
        start, end = _window(window, period)
        delays = np.asarray(delays, np.int64)
        if delays.shape != shape or (delays.size and delays.min() < 0):
            raise ValueError(f"delays must be non-negative, of shape {shape}")
        super().__init__(shape=shape, start=start, end=end, period=int(period), name=name)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.delays = Var(shape=shape, init=delays)
        self.history = Var(shape=(end - start, *shape), init=0)


# ---- lava-dl's sigma-delta neurons, cleared at every window start ---------------------------
def _reset_at(proc: AbstractProcess, reset_interval: int, reset_offset: int, init,
              names: tuple[str, ...]) -> None:
    """Lava's sigma-delta processes have no reset (netx runs them as one stream); a sample run
    needs their state set where each window opens, as LIFReset does for LIF: at the Lava time
    step t with t % reset_interval == reset_offset, to ``init[name]`` (per neuron; zero where
    absent), what a stock stream holds when a sample reaches the block."""
    proc.proc_params["reset_interval"] = int(reset_interval)
    proc.proc_params["reset_offset"] = int(reset_offset) % int(reset_interval)
    shape = proc.proc_params["shape"]
    for name in names:
        value = np.broadcast_to(np.asarray((init or {}).get(name, 0), np.int64), shape)
        setattr(proc, f"{name}_init", Var(shape=shape, init=value.copy()))


class DeltaReset(Delta):
    """Lava's Delta encoder (a lava-dl SDNN input layer), reset at each window start."""

    def __init__(self, *, reset_interval: int, reset_offset: int, init=None, **kwargs):
        super().__init__(**kwargs)
        _reset_at(self, reset_interval, reset_offset, init, ("act", "residue"))


class SigmaDeltaReset(SigmaDelta):
    """Lava's SigmaDelta neuron (a lava-dl SDNN layer), reset at each window start."""

    def __init__(self, *, reset_interval: int, reset_offset: int, init=None, **kwargs):
        super().__init__(**kwargs)
        _reset_at(self, reset_interval, reset_offset, init, ("sigma", "act", "residue"))


class SigmaReset(Sigma):
    """Lava's Sigma decoder (a lava-dl SDNN ``sigma_output`` layer), reset at each window
    start."""

    def __init__(self, *, reset_interval: int, reset_offset: int, init=None, **kwargs):
        super().__init__(**kwargs)
        _reset_at(self, reset_interval, reset_offset, init, ("sigma",))
