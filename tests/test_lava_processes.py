"""The Lava processes on their own, against expectations worked out from docs/semantics.md,
and the Lava facts the lowering relies on (synapse delay, weight encoding, Conv layout)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lava")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lava.magma.core.run_conditions import RunSteps  # noqa: E402
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: E402
from lava.proc.conv.process import Conv  # noqa: E402
from lava.proc.dense.process import Dense  # noqa: E402
from lava.proc.io.sink import RingBuffer as Sink  # noqa: E402
from lava.proc.io.source import RingBuffer as Source  # noqa: E402
from lava.proc.sparse.process import Sparse  # noqa: E402
from lava.utils.weightutils import SignMode  # noqa: E402

from mtdeploy.kinds import rng  # noqa: E402
from mtdeploy.targets.loihi2.lava.network import SYNAPSE_HOP, child_pids  # noqa: E402
from mtdeploy.targets.loihi2.lava.procs.process import (AlignAvgRepeat, AlignTTM,  # noqa: E402
                                                         DelayLine, IFNeuron, Readout,
                                                         SampleSource, TPPNeuron, ttm_matrix)

pytestmark = pytest.mark.lava


@pytest.fixture(autouse=True, scope="module")
def no_leftover_processes():
    before = child_pids()
    yield
    left = child_pids() - before
    assert not left, f"Lava left OS processes behind: {sorted(left)}"


def run_and_read(root, steps: int, tag: str, *vars_):
    """Run the network of ``root`` for ``steps``; read ``vars_`` before always stopping it."""
    try:
        root.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag=tag))
        return [np.asarray(v.get()) for v in vars_]
    finally:
        root.stop()


def step_input(values: np.ndarray) -> Source:
    """Lava ring-buffer source: values (steps, *shape) -> data (*shape, steps)."""
    return Source(data=np.moveaxis(np.asarray(values), 0, -1))


# ---- Lava facts ---------------------------------------------------------------------------
def test_synapse_delay_weight_encoding_conv_layout_and_port_sum():
    """Dense, Sparse and Conv deliver one step late (SYNAPSE_HOP); Dense drops a mixed-sign
    weight's LSB unless sent as 2w with weight_exp=-1; Conv takes (C_out, W, H, C_in) flipped
    kernels with (x, y) = (W, H) geometry; two connections into one InPort add."""
    r = np.random.default_rng(0)
    steps = 4
    x = r.integers(-9, 10, (1, 5, 4))                    # IR (C, H, W), graded values
    x_lava = x.transpose(2, 1, 0)                         # (W, H, C)
    data = np.zeros((steps, *x_lava.shape), np.int64)
    data[0] = x_lava
    src = Source(data=np.moveaxis(data, 0, -1))
    flat = src.s_out.flatten()
    w = np.array([[3, -1] + [0] * 18])                     # odd, mixed-sign
    naive = Dense(weights=w, num_message_bits=24)
    encoded = Dense(weights=2 * w, num_message_bits=24, weight_exp=-1,
                    sign_mode=SignMode.MIXED)
    sparse = Sparse(weights=2 * w, num_message_bits=24, weight_exp=-1, sign_mode=SignMode.MIXED)
    kernel = r.integers(-3, 4, (2, 1, 3, 3))              # torch OIHW
    conv = Conv(weight=kernel[:, :, ::-1, ::-1].transpose(0, 3, 2, 1).copy(),
                input_shape=x_lava.shape, padding=(1, 1), stride=(2, 1), num_message_bits=24)
    sinks = [Sink(shape=(1,), buffer=steps) for _ in range(4)]
    csink = Sink(shape=conv.output_shape, buffer=steps)
    for syn, sink in zip((naive, encoded, sparse), sinks):
        flat.connect(syn.s_in)
        syn.a_out.connect(sink.a_in)
    twice = Dense(weights=2 * w, num_message_bits=24, weight_exp=-1, sign_mode=SignMode.MIXED)
    flat.connect(twice.s_in)
    twice.a_out.connect(sinks[3].a_in)
    encoded.a_out.connect(sinks[3].a_in)
    src.s_out.connect(conv.s_in)
    conv.a_out.connect(csink.a_in)
    got = run_and_read(src, steps, "fixed_pt", *[s.data for s in sinks], csink.data)

    exact = 3 * x_lava.ravel()[0] - x_lava.ravel()[1]
    truncated = 2 * x_lava.ravel()[0] - 2 * x_lava.ravel()[1]
    for k, expected in ((0, truncated), (1, exact), (2, exact), (3, 2 * exact)):
        trace = got[k][0]
        assert np.flatnonzero(trace).tolist() == [SYNAPSE_HOP], (k, trace)
        assert trace[SYNAPSE_HOP] == expected, (k, trace)
    ref = F.conv2d(torch.tensor(x[None], dtype=torch.float64),
                   torch.tensor(kernel, dtype=torch.float64), stride=(1, 2), padding=1)[0]
    conv_trace = got[4]
    assert np.array_equal(conv_trace[..., SYNAPSE_HOP].transpose(2, 1, 0), ref.numpy())
    assert not np.any(np.delete(conv_trace, SYNAPSE_HOP, axis=-1))


# ---- integrate-and-fire -------------------------------------------------------------------
def test_if_neuron_fixed_window_reset_saturation_counts():
    period, window = 8, (2, 6)
    th, v0 = 10, 5
    # per neuron: constant current 4, 7, -2^23 (saturates), and 100 outside the window only
    cur = np.zeros((2 * period, 4), np.int64)
    for n in range(2):
        base = n * period
        cur[base + 2:base + 6, 0] = 4
        cur[base + 2:base + 6, 1] = 7
        cur[base + 2:base + 6, 2] = -(2 ** 23)
        cur[base:base + 2, 3] = 100
        cur[base + 6:base + 8, 3] = 100
    src = step_input(cur)
    bias = np.array([1, 1, 0, 0])
    reset = IFNeuron(shape=(4,), threshold=th, v_init=v0, bias=bias, window=window,
                     period=period, n_samples=2, record=True)
    keep = IFNeuron(shape=(4,), threshold=th, v_init=v0, bias=bias, window=window,
                    period=period, n_samples=2, record=True, reset=False)
    sinks = []
    for neuron in (reset, keep):
        src.s_out.connect(neuron.a_in)
        sinks.append(Sink(shape=(4,), buffer=2 * period))
        neuron.s_out.connect(sinks[-1].a_in)
    s_reset, s_keep, c_reset, v_keep = run_and_read(src, 2 * period, "fixed_pt", sinks[0].data,
                                                    sinks[1].data, reset.counts, keep.v)
    # neuron 0: m = 5+4+1 = 10 >= 10 fire, v = 0; m = 5; m = 10 fire; m = 5
    # neuron 1: m = 13 fire (v 3); 11 fire (v 1); 9 (v 9); 17 fire (v 7)
    first = {0: [1, 0, 1, 0], 1: [1, 1, 0, 1], 2: [0, 0, 0, 0], 3: [0, 0, 0, 0]}
    for i, spikes in first.items():
        expected = np.zeros(2 * period)
        expected[2:6] = spikes
        expected[period + 2:period + 6] = spikes          # re-initialised: the same again
        assert np.array_equal(s_reset[i], expected), i
    # without reset neuron 1 starts sample 2 at v = 7: m = 15 fire (5); 13 fire (3); 11 fire (1);
    # 9 no
    assert s_keep[1, period + 2:period + 6].tolist() == [1, 1, 1, 0]
    # 24-bit saturation: the membrane sticks at -2^23 instead of running away
    assert v_keep[2] == -(2 ** 23)
    assert c_reset.tolist() == [[2, 3, 0, 0], [2, 3, 0, 0]]


def test_if_neuron_float():
    period = 4
    cur = np.array([[0.3], [0.3], [0.3], [0.0]])
    src = step_input(cur)
    neuron = IFNeuron(shape=(1,), threshold=0.5, v_init=0.25, bias=0.1, window=(0, 3),
                      period=period)
    sink = Sink(shape=(1,), buffer=period)
    src.s_out.connect(neuron.a_in)
    neuron.s_out.connect(sink.a_in)
    (out,) = run_and_read(src, period, "floating_pt", sink.data)
    # m = 0.25+0.4 = 0.65 fire (0.15); 0.55 fire (0.05); 0.45 no; window closed
    assert out[0].tolist() == [1, 1, 0, 0]


# ---- alignment, delay, readout -------------------------------------------------------------
def test_ttm_boundaries_use_python_round():
    # 5 -> 2: b = [0, round(2.5) = 2, 5]: groups {0, 1} and {2, 3, 4}
    assert ttm_matrix(5, 2).tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert ttm_matrix(2, 5).tolist() == [[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]]
    assert ttm_matrix(3, 3).tolist() == np.eye(3, dtype=int).tolist()


@pytest.mark.parametrize("tag", ["fixed_pt", "floating_pt"])
def test_align_delay_and_readout(tag):
    period = 12
    values = np.arange(1, 2 * period + 1).reshape(-1, 1) * np.array([[1, -2]])   # (steps, 2)
    src = step_input(values)
    avg = AlignAvgRepeat(shape=(2,), in_window=(1, 4), out_window=(5, 7), period=period)
    down = AlignTTM(shape=(2,), in_start=0, t_in=5, out_start=6, t_out=2, period=period)
    up = AlignTTM(shape=(2,), in_start=0, t_in=2, out_start=3, t_out=5, period=period)
    delay = DelayLine(shape=(2,), delay=3)
    readout = Readout(shape=(2,), bias=np.array([10, 0]), window=(2, 5), period=period,
                      n_samples=2)
    sinks = []
    for proc in (avg, down, up, delay):
        src.s_out.connect(proc.a_in)
        sinks.append(Sink(shape=(2,), buffer=2 * period))
        proc.a_out.connect(sinks[-1].a_in)
    src.s_out.connect(readout.a_in)
    samples = np.array([[5, -6], [-8, 9]])
    source = SampleSource(data=samples, period=period)
    source_sink = Sink(shape=(2,), buffer=2 * period)
    source.s_out.connect(source_sink.a_in)
    source.s_out.connect(readout.a_in)      # at step 0: outside the readout's window
    got = run_and_read(src, 2 * period, tag, *[s.data for s in sinks], readout.result,
                       source_sink.data)
    a, d, u, dl, result, presented = got
    assert np.array_equal(presented[:, [0, period]], samples.T)        # once per sample
    assert not np.delete(presented, [0, period], axis=1).any()
    for n in range(2):
        base = n * period
        x = values[base:base + period, 0]
        exp_avg = np.zeros(period)
        exp_avg[5:7] = x[1:4].sum()
        exp_down = np.zeros(period)
        exp_down[6:8] = [x[0] + x[1], x[2] + x[3] + x[4]]
        exp_up = np.zeros(period)
        exp_up[3:8] = [x[0], x[0], x[1], x[1], x[1]]
        for trace, expected in ((a, exp_avg), (d, exp_down), (u, exp_up)):
            assert np.array_equal(trace[0, base:base + period], expected)
            assert np.array_equal(trace[1, base:base + period], -2 * expected)
        assert result[n].tolist() == [x[2:5].sum() + 30, -2 * x[2:5].sum()]
    assert np.array_equal(dl[0, 3:], values[:-3, 0]) and not dl[:, :3].any()


# ---- TPP ----------------------------------------------------------------------------------
def tpp_expected(cur, bias, th, t, seed, population, sample):
    """Semantics §3 TPP for one sample, neurons in flat order."""
    v = cur.sum(0) + t * bias
    out = []
    for k in range(1, t + 1):
        r = rng.uniform_int(seed, population, sample, k, np.arange(v.size))
        s = r * (t - k + 1) * th < v * 2 ** rng.UNIFORM_BITS
        v = v - th * s
        out.append(s.astype(int))
    return np.array(out)


def test_tpp_neuron_fixed_matches_semantics_and_seed():
    t, th, period, start = 4, 16, 10, 1
    r = np.random.default_rng(3)
    cur = np.zeros((2 * period, 6), np.int64)
    for n in range(2):
        cur[n * period + start:n * period + start + t] = r.integers(0, 20, (t, 6))
    bias = np.array([0, 1, 2, 3, -1, 5])
    src = step_input(cur)
    ids = np.arange(6)
    procs = [TPPNeuron(shape=(6,), threshold=th, bias=bias, start=start, T=t, period=period,
                       seed=seed, population="layer", neuron_ids=ids, n_samples=2, record=True)
             for seed in (7, 7, 8)]
    sinks = []
    for proc in procs:
        src.s_out.connect(proc.a_in)
        sinks.append(Sink(shape=(6,), buffer=2 * period))
        proc.s_out.connect(sinks[-1].a_in)
    a, b, c = run_and_read(src, 2 * period, "fixed_pt", *[s.data for s in sinks])
    assert np.array_equal(a, b), "same seed, different spikes"
    assert not np.array_equal(a, c), "a different seed should change some draw"
    for n in range(2):
        base = n * period
        win = cur[base + start:base + start + t]
        expected = tpp_expected(win, bias, th, t, 7, "layer", n)
        assert not a[:, base:base + start + t].any(), "phase 1 must be silent"
        assert np.array_equal(a[:, base + start + t:base + start + 2 * t], expected.T)
