"""CPU models of the MT-SNN processes: ``fixed_pt`` (integers, semantics §3) and ``floating_pt``
(semantics §2). Each pair shares its step logic; the subclasses only declare the number types.

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

from mtdeploy.kinds import rng
from mtdeploy.targets.loihi2.lava.procs.process import (AlignAvgRepeat, AlignTTM, DelayLine,
                                                         IFNeuron, Readout, SampleSource,
                                                         TPPNeuron)

STATE_MIN, STATE_MAX = -(2 ** 23), 2 ** 23 - 1   # 24-bit membrane (semantics §3)
I64 = np.int64


class _Clocked(PyLoihiProcessModel):
    """Step inside the sample period and the sample index, from Lava's 1-based time step."""

    def clock(self) -> tuple[int, int]:
        step = self.time_step - 1
        period = self.proc_params["period"]
        return step % period, step // period


# ---- input --------------------------------------------------------------------------------
class _SourceBase(_Clocked):
    def run_spk(self):
        g, n = self.clock()
        if g == 0 and n < self.data.shape[0]:
            self.s_out.send(self.data[n])
        else:
            self.s_out.send(np.zeros(self.s_out.shape, self.data.dtype))


@implements(proc=SampleSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySampleSourceFixed(_SourceBase):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, I64, precision=24)
    data: np.ndarray = LavaPyType(np.ndarray, I64, precision=24)


@implements(proc=SampleSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySampleSourceFloat(_SourceBase):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    data: np.ndarray = LavaPyType(np.ndarray, float)


# ---- integrate-and-fire -------------------------------------------------------------------
class _IFBase(_Clocked):
    saturate = False

    def run_spk(self):
        a = self.a_in.recv()
        g, n = self.clock()
        p = self.proc_params
        if p["start"] <= g < p["end"]:
            if g == p["start"] and p["reset"]:
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


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyIFNeuronFixed(_IFBase):
    saturate = True
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, I64, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    v: np.ndarray = LavaPyType(np.ndarray, I64, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, I64, precision=24)
    counts: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)


@implements(proc=IFNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyIFNeuronFloat(_IFBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    counts: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)


# ---- two-phase probabilistic --------------------------------------------------------------
class _TPPBase(_Clocked):
    def fire(self, r: np.ndarray, remaining: int) -> np.ndarray:
        raise NotImplementedError

    def run_spk(self):
        a = self.a_in.recv()
        g, n = self.clock()
        p = self.proc_params
        start, t = p["start"], p["T"]
        s = np.zeros(self.s_out.shape, np.int32)
        if start <= g < start + t:                       # phase 1: integrate, silent
            if g == start:
                self.v[:] = 0
            self.v[:] = self.v + a + self.bias
        elif start + t <= g < start + 2 * t:             # phase 2: fire
            k = g - start - t + 1
            r = rng.uniform_int(p["seed"], p["population"], n + p["sample_offset"], k,
                                self.neuron_ids)
            fired = self.fire(r, t - k + 1)
            self.v[:] = self.v - p["threshold"] * fired
            if p["record"] and n < self.counts.shape[0]:
                self.counts[n] += fired
            s = fired.astype(np.int32)
        self.s_out.send(s)


@implements(proc=TPPNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTPPNeuronFixed(_TPPBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, I64, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    v: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)
    bias: np.ndarray = LavaPyType(np.ndarray, I64, precision=24)
    neuron_ids: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)
    counts: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)

    def fire(self, r, remaining):
        # s = [r * (T-k+1) * th < v * 2^24]: the Bernoulli test without a division.
        th = int(self.proc_params["threshold"])
        return r.astype(I64) * (remaining * th) < self.v * (1 << rng.UNIFORM_BITS)


@implements(proc=TPPNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTPPNeuronFloat(_TPPBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    neuron_ids: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)
    counts: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)

    def fire(self, r, remaining):
        prob = np.clip(self.v / (self.proc_params["threshold"] * remaining), 0.0, 1.0)
        return r / float(1 << rng.UNIFORM_BITS) < prob


# ---- alignment ----------------------------------------------------------------------------
class _AvgRepeatBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        g, _ = self.clock()
        p = self.proc_params
        if g == p["a0"]:
            self.acc[:] = 0
        if p["a0"] <= g < p["a1"]:
            self.acc[:] = self.acc + a
        if p["b0"] <= g < p["b1"]:
            self.a_out.send(self.acc)
        else:
            self.a_out.send(np.zeros(self.a_out.shape, self.acc.dtype))


@implements(proc=AlignAvgRepeat, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAlignAvgRepeatFixed(_AvgRepeatBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, I64, precision=32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, I64, precision=32)
    acc: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)


@implements(proc=AlignAvgRepeat, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyAlignAvgRepeatFloat(_AvgRepeatBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    acc: np.ndarray = LavaPyType(np.ndarray, float)


class _TTMBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        g, _ = self.clock()
        p = self.proc_params
        i = g - p["a0"]
        if 0 <= i < p["t_in"]:
            self.buffer[i] = a
        j = g - p["b0"]
        if 0 <= j < p["t_out"]:
            out = np.tensordot(self.mix[j], self.buffer, axes=1).astype(self.buffer.dtype)
            self.a_out.send(out)
        else:
            self.a_out.send(np.zeros(self.a_out.shape, self.buffer.dtype))


@implements(proc=AlignTTM, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyAlignTTMFixed(_TTMBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, I64, precision=32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, I64, precision=32)
    buffer: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)
    mix: np.ndarray = LavaPyType(np.ndarray, I64, precision=1)


@implements(proc=AlignTTM, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyAlignTTMFloat(_TTMBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    buffer: np.ndarray = LavaPyType(np.ndarray, float)
    mix: np.ndarray = LavaPyType(np.ndarray, float)


class _DelayBase(PyLoihiProcessModel):
    def run_spk(self):
        a = self.a_in.recv()
        slot = self.time_step % self.fifo.shape[0]
        self.a_out.send(self.fifo[slot].copy())
        self.fifo[slot] = a


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayLineFixed(_DelayBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, I64, precision=32)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, I64, precision=32)
    fifo: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyDelayLineFloat(_DelayBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    fifo: np.ndarray = LavaPyType(np.ndarray, float)


# ---- readout ------------------------------------------------------------------------------
class _ReadoutBase(_Clocked):
    def run_spk(self):
        a = self.a_in.recv()
        g, n = self.clock()
        p = self.proc_params
        if p["start"] <= g < p["end"]:
            if g == p["start"]:
                self.acc[:] = 0
            self.acc[:] = self.acc + a + self.bias
            if g == p["end"] - 1 and n < self.result.shape[0]:
                self.result[n] = self.acc


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyReadoutFixed(_ReadoutBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, I64, precision=32)
    acc: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)
    bias: np.ndarray = LavaPyType(np.ndarray, I64, precision=24)
    result: np.ndarray = LavaPyType(np.ndarray, I64, precision=32)


@implements(proc=Readout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyReadoutFloat(_ReadoutBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    acc: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    result: np.ndarray = LavaPyType(np.ndarray, float)
