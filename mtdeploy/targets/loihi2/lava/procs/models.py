"""CPU models of the MT-SNN processes: ``fixed_pt`` (integers, semantics §3) and ``floating_pt``
(semantics §2). Each pair shares its step logic (a ``_...Base`` class); :func:`_models` makes the
two decorated classes Lava looks up, which differ only in the number types of their ports and
state (Lava reads them from ``LavaPyType`` class attributes, per class).

Imports are absolute: Lava's compiler executes this file on its own when it looks for models.
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.sdn.models import AbstractDeltaModel, AbstractSigmaDeltaModel, AbstractSigmaModel

from mtdeploy.kinds import rng
from mtdeploy.targets.loihi2.lava.procs.process import (AlignAvgRepeat, AlignTTM, DelayLine,
                                                         DeltaReset, IFNeuron, MaxPool,
                                                         PartialSum, Readout, SampleSource,
                                                         SigmaDeltaReset, SigmaReset, TPPNeuron,
                                                         WindowDelay)

STATE_MIN, STATE_MAX = -(2 ** 23), 2 ** 23 - 1   # 24-bit membrane (semantics §3)
I64 = np.int64


_PORT_TYPES = {"in": PyInPort.VEC_DENSE, "out": PyOutPort.VEC_DENSE, "var": np.ndarray}


def _models(proc, base, fields: dict[str, tuple], fixed: dict | None = None,
            floating: dict | None = None) -> None:
    """Define ``Py<Proc>Fixed`` (``fixed_pt``) and ``Py<Proc>Float`` (``floating_pt``) in this
    module: ``base``'s logic with each field typed for the mode. A field ``(where, bits)`` is an
    integer of ``bits`` bits in fixed point and a float in floating point; ``(where, dtype,
    bits)`` is that type in both. ``fixed``/``floating``: further class attributes per mode."""
    for mode, suffix, extra in (("fixed_pt", "Fixed", fixed), ("floating_pt", "Float", floating)):
        attrs = {"__module__": __name__, **(extra or {})}
        for name, (where, *spec) in fields.items():
            if len(spec) == 2:
                attrs[name] = LavaPyType(_PORT_TYPES[where], spec[0], precision=spec[1])
            elif mode == "fixed_pt":
                attrs[name] = LavaPyType(_PORT_TYPES[where], I64, precision=spec[0])
            else:
                attrs[name] = LavaPyType(_PORT_TYPES[where], float)
        cls = type(f"Py{proc.__name__}{suffix}", (base,), attrs)
        globals()[cls.__name__] = implements(proc=proc, protocol=LoihiProtocol)(
            requires(CPU)(tag(mode)(cls)))


SPIKES = ("out", np.int32, 1)          # binary spikes on the wire in both modes
COUNTS = ("var", I64, 32)              # recorded spike counts per sample


class _Clocked(PyLoihiProcessModel):
    """The step inside a window and the sample it belongs to, from Lava's 1-based time step."""

    def clock(self, start: int) -> tuple[int, int]:
        """(k, n): sample n's window that opened at ``start + n * period`` is at its step k
        (n < 0 before sample 0's window opens)."""
        since = self.time_step - 1 - start
        period = self.proc_params["period"]
        return since % period, since // period

    def active(self, start: int, length: int) -> tuple[int, int] | None:
        """(k, n) while sample n's window of ``length`` steps from ``start`` is open, else None."""
        k, n = self.clock(start)
        return (k, n) if n >= 0 and k < length else None


# ---- input --------------------------------------------------------------------------------
class _SourceBase(_Clocked):
    def run_spk(self):
        now = self.active(0, 1)
        if now is not None and now[1] < self.data.shape[0]:
            self.s_out.send(self.data[now[1]])
        else:
            self.s_out.send(np.zeros(self.s_out.shape, self.data.dtype))


_models(SampleSource, _SourceBase, {"s_out": ("out", 24), "data": ("var", 24)})


# ---- integrate-and-fire -------------------------------------------------------------------
class _IFBase(_Clocked):
    saturate = False

    def run_spk(self):
        a = self.a_in.recv()
        p = self.proc_params
        now = self.active(p["start"], p["end"] - p["start"])
        if now is not None:
            k, n = now
            if k == 0 and p["reset"]:
                self.v[:] = p["v_init"]
            th = p["threshold"]
            m = self.v + a + self.bias
            s = m >= th
            v = m - th * s
            self.v[:] = np.clip(v, STATE_MIN, STATE_MAX) if self.saturate else v
            if p["record"] and n < self.counts.shape[0]:
                self.counts[n] += s
            self.s_out.send(s.astype(np.int32))
        else:
            self.s_out.send(np.zeros(self.s_out.shape, np.int32))


_models(IFNeuron, _IFBase, {"a_in": ("in", 32), "s_out": SPIKES, "v": ("var", 24),
                           "bias": ("var", 24), "counts": COUNTS},
        fixed={"saturate": True})


# ---- two-phase probabilistic --------------------------------------------------------------
class _TPPBase(_Clocked):
    def fire(self, r: np.ndarray, remaining: int) -> np.ndarray:
        raise NotImplementedError

    def run_spk(self):
        a = self.a_in.recv()
        p = self.proc_params
        t = p["T"]
        g, n = self.clock(p["start"])
        s = np.zeros(self.s_out.shape, np.int32)
        if n >= 0 and g < t:                             # phase 1: integrate, silent
            if g == 0:
                self.v[:] = 0
            self.v[:] = self.v + a + self.bias
        elif n >= 0 and t <= g < 2 * t:                  # phase 2: fire
            k = g - t + 1
            r = rng.uniform_int(p["seed"], p["population"], n + p["sample_offset"], k,
                                self.neuron_ids)
            fired = self.fire(r, t - k + 1)
            self.v[:] = self.v - p["threshold"] * fired
            if p["record"] and n < self.counts.shape[0]:
                self.counts[n] += fired
            s = fired.astype(np.int32)
        self.s_out.send(s)


def _fire_fixed(self, r, remaining):
    # s = [r * (T-k+1) * th < v * 2^24]: the Bernoulli test without a division.
    th = np.asarray(self.proc_params["threshold"], I64)     # one, or one per neuron
    return r.astype(I64) * (remaining * th) < self.v * (1 << rng.UNIFORM_BITS)


def _fire_float(self, r, remaining):
    prob = np.clip(self.v / (self.proc_params["threshold"] * remaining), 0.0, 1.0)
    return r / float(1 << rng.UNIFORM_BITS) < prob


_models(TPPNeuron, _TPPBase, {"a_in": ("in", 32), "s_out": SPIKES, "v": ("var", 32),
                             "bias": ("var", 24), "neuron_ids": ("var", I64, 32),
                             "counts": COUNTS},
        fixed={"fire": _fire_fixed}, floating={"fire": _fire_float})


# ---- alignment ----------------------------------------------------------------------------
class _AvgRepeatBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        p = self.proc_params
        depth = self.acc.shape[0]
        arriving = self.active(p["a0"], p["a1"] - p["a0"])
        if arriving is not None:
            k, n = arriving
            if k == 0:
                self.acc[n % depth] = 0
            self.acc[n % depth] += a
        leaving = self.active(p["b0"], p["b1"] - p["b0"])
        if leaving is not None:
            self.a_out.send(self.acc[leaving[1] % depth].copy())
        else:
            self.a_out.send(np.zeros(self.a_out.shape, self.acc.dtype))


_models(AlignAvgRepeat, _AvgRepeatBase, {"a_in": ("in", 32), "a_out": ("out", 32),
                                         "acc": ("var", 32)})


class _TTMBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        p = self.proc_params
        depth = self.buffer.shape[0]
        arriving = self.active(p["a0"], p["t_in"])
        if arriving is not None:
            i, n = arriving
            self.buffer[n % depth, i] = a
        leaving = self.active(p["b0"], p["t_out"])
        if leaving is not None:
            j, n = leaving
            out = np.tensordot(self.mix[j], self.buffer[n % depth], axes=1)
            self.a_out.send(out.astype(self.buffer.dtype))
        else:
            self.a_out.send(np.zeros(self.a_out.shape, self.buffer.dtype))


_models(AlignTTM, _TTMBase, {"a_in": ("in", 32), "a_out": ("out", 32), "buffer": ("var", 32),
                             "mix": ("var", 1)})


class _DelayBase(PyLoihiProcessModel):
    def run_spk(self):
        a = self.a_in.recv()
        slot = self.time_step % self.fifo.shape[0]
        self.a_out.send(self.fifo[slot].copy())
        self.fifo[slot] = a


_models(DelayLine, _DelayBase, {"a_in": ("in", 32), "a_out": ("out", 32), "fifo": ("var", 32)})
# a partial sum is a one-step delay of its block's current (24-bit graded payload, checked by
# the budget checker's partial_sum_range rule)
_models(PartialSum, _DelayBase, {"a_in": ("in", 32), "a_out": ("out", 32), "fifo": ("var", 32)})


class _MaxPoolBase(PyLoihiProcessModel):
    def run_spk(self):
        a = self.a_in.recv()                       # (W, H, C)
        p = self.proc_params
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
        low = np.iinfo(np.int64).min if np.issubdtype(a.dtype, np.integer) else -np.inf
        x = np.pad(a.transpose(2, 1, 0), ((0, 0), (ph, ph), (pw, pw)), constant_values=low)
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
        self.a_out.send(np.ascontiguousarray(win.max(axis=(3, 4)).transpose(2, 1, 0)) * p["gain"])


_models(MaxPool, _MaxPoolBase, {"a_in": ("in", 32), "a_out": ("out", 32)})


class _WindowDelayBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        p = self.proc_params
        now = self.active(p["start"], p["end"] - p["start"])
        if now is None:
            self.a_out.send(np.zeros_like(a))
            return
        k, _ = now
        if k == 0:
            self.history[:] = 0
        self.history[k] = a
        src = k - self.delays
        past = np.take_along_axis(self.history, np.clip(src, 0, None)[None], 0)[0]
        self.a_out.send(np.where(src >= 0, past, 0))


_models(WindowDelay, _WindowDelayBase, {"a_in": ("in", 32), "a_out": ("out", 32),
                                        "delays": ("var", I64, 8), "history": ("var", 32)})


# ---- readout ------------------------------------------------------------------------------
class _ReadoutBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        p = self.proc_params
        now = self.active(p["start"], p["end"] - p["start"])
        if now is not None:
            k, n = now
            if k == 0:
                self.acc[:] = 0
            self.acc[:] = self.acc + a + self.bias
            if k == p["end"] - p["start"] - 1 and n < self.result.shape[0]:
                self.result[n] = self.acc


_models(Readout, _ReadoutBase, {"a_in": ("in", 32), "acc": ("var", 32), "bias": ("var", 24),
                               "result": ("var", 32)})


# ---- lava-dl's sigma-delta neurons with a window reset ---------------------------------------
# Lava's own fixed_pt dynamics (inherited from its abstract models; the state types are those
# of lava.proc.sdn.models' fixed models); only the reset where a window opens is added.
def _reset_due(model) -> bool:
    p = model.proc_params
    return model.time_step % p["reset_interval"] == p["reset_offset"]


def _sdn_state(*names: str, bias: bool = False, init: tuple[str, ...] = ()) -> dict:
    state = {n: LavaPyType(np.ndarray, np.int32, precision=24)
             for n in names + tuple(f"{i}_init" for i in init)}
    state.update({"spike_exp": LavaPyType(np.ndarray, np.int32, precision=3),
                  "state_exp": LavaPyType(np.ndarray, np.int32, precision=3),
                  "cum_error": LavaPyType(np.ndarray, bool, precision=1)})
    if bias:
        state["bias"] = LavaPyType(np.ndarray, np.int32, precision=16)
    return state


_SDN_PORTS = {"a_in": LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24),
              "s_out": LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)}


class _DeltaResetBase(AbstractDeltaModel):
    def run_spk(self):
        if _reset_due(self):
            self.act[:], self.residue[:], self.error[:] = self.act_init, self.residue_init, 0
        a_in = np.left_shift(self.a_in.recv(), self.spike_exp + self.state_exp)
        s_out = np.right_shift(self.delta_dynamics(a_in), self.state_exp)
        self.act = a_in
        self.s_out.send(s_out)


class _SigmaDeltaResetBase(AbstractSigmaDeltaModel):
    def run_spk(self):
        if _reset_due(self):
            self.sigma[:], self.act[:] = self.sigma_init, self.act_init
            self.residue[:], self.error[:] = self.residue_init, 0
        a_in = self.a_in.recv()
        self.s_out.send(np.right_shift(self.dynamics(a_in), self.state_exp))


class _SigmaResetBase(AbstractSigmaModel):
    def run_spk(self):
        if _reset_due(self):
            self.sigma[:] = self.sigma_init
        super().run_spk()


for _proc, _base, _state in (
        (DeltaReset, _DeltaResetBase,
         _sdn_state("vth", "sigma", "act", "residue", "error", init=("act", "residue"))),
        (SigmaDeltaReset, _SigmaDeltaResetBase,
         _sdn_state("vth", "sigma", "act", "residue", "error", bias=True,
                    init=("sigma", "act", "residue"))),
        (SigmaReset, _SigmaResetBase,
         {n: LavaPyType(np.ndarray, np.int32, precision=24) for n in ("sigma", "sigma_init")})):
    _cls = type(f"Py{_proc.__name__}Fixed", (_base,),
                {"__module__": __name__, **_SDN_PORTS, **_state})
    globals()[_cls.__name__] = implements(proc=_proc, protocol=LoihiProtocol)(
        requires(CPU)(tag("fixed_pt")(_cls)))
