"""Whole networks on Lava: the lowered process graph must equal the reference simulator's
fixed-point run bit for bit (outputs and every population's spike counts, every sample)."""
from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("lava")

from mtdeploy.errors import MtdeployError  # noqa: E402
from mtdeploy.frontends import import_torch  # noqa: E402
from mtdeploy.nn import QCFS  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402
from mtdeploy.targets.loihi2.lava import (first_divergence, format_ladder, ladder,  # noqa: E402
                                          lower_to_lava, run_lava)
from mtdeploy.targets.loihi2.lava import network  # noqa: E402
from mtdeploy.testing import random_cnn, random_mlp, random_residual  # noqa: E402

pytestmark = pytest.mark.lava


@pytest.fixture(autouse=True, scope="module")
def no_leftover_processes():
    before = network.child_pids()
    yield
    left = network.child_pids() - before
    assert not left, f"Lava left OS processes behind: {sorted(left)}"


def build(graph, alignment="avg-repeat", neuron="if", input_max=1.5, seed=0):
    return quantize(convert(graph, ConvertOptions(alignment=alignment, neuron=neuron,
                                                  input_max=input_max, seed=seed)))


def assert_bit_exact(graph, x, seed=None):
    ref = simulate(graph, x, mode="fixed", seed=seed)
    out, counts = run_lava(graph, x, fixed_point=True, seed=seed, record_counts=True,
                           timeout_s=300)
    assert np.array_equal(out, ref.output), np.abs(out - ref.output).max()
    assert set(counts) == set(ref.counts)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop
    assert sum(int(c.sum()) for c in counts.values()) > 0, "a silent network proves little"
    return out, counts


def pool_first_model():
    """A pool between conv and activation: the edge's matrix sums several kernel taps, so its
    integers exceed 8 bits and the lowering must split them into digit matrices."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AvgPool2d(2, stride=1), QCFS(4, 1.0),
                         nn.Conv2d(4, 3, 3, stride=2), QCFS(8, 0.7), nn.Flatten(),
                         nn.Linear(12, 5)).eval()


# ---- bit-exactness ------------------------------------------------------------------------
@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_torch_models_bit_exact(qcfs_model, alignment):
    graph = build(import_torch(qcfs_model.model, qcfs_model.input_shape), alignment)
    assert_bit_exact(graph, qcfs_model.batch(4).numpy())


@pytest.mark.parametrize("arch, levels", [(random_mlp, (2, 8)), (random_cnn, (8, 2)),
                                          (random_residual, (4, 1, 16))])
def test_random_mixed_level_graphs_bit_exact_both_alignments(arch, levels):
    rng = np.random.default_rng(sum(levels))
    ir = arch(rng, levels=levels)
    x = rng.uniform(-0.5, 1.5, (4, *ir.input.shape))
    for alignment in ("avg-repeat", "ttm"):
        graph = build(ir, alignment, input_max=2.0)
        if alignment == "ttm":
            ttm = [n.attrs for n in graph.of_kind("align") if n.attrs["method"] == "ttm"]
            assert ttm, "the levels were chosen so that T changes somewhere"
        assert_bit_exact(graph, x)


def test_ttm_up_and_down_and_digit_split_bit_exact():
    graph = build(import_torch(pool_first_model(), (2, 6, 6)), "ttm")
    ttm = [(n.attrs["t_in"], n.attrs["t_out"]) for n in graph.of_kind("align")
           if n.attrs["method"] == "ttm"]
    assert any(a < b for a, b in ttm), "needs an up-sampling edge"
    desc = lower_to_lava(graph).describe()
    digits = max(e["weight_digits"] for layer in desc["layers"] for e in layer["edges"])
    assert digits >= 2, "needs a matrix beyond 8 bits"
    x = np.random.default_rng(0).uniform(-0.25, 1.25, (4, 2, 6, 6))
    assert_bit_exact(graph, x)


def test_residual_ttm_streamed_edge_with_delay_line_bit_exact(qcfs_residual):
    """Under ttm, equal-T edges stream; where a population's other input arrives later the
    streamed current must wait in a DelayLine."""
    graph = build(import_torch(qcfs_residual.model, qcfs_residual.input_shape), "ttm")
    desc = lower_to_lava(graph).describe()
    assert any(e["delay"] > 0 for layer in desc["layers"] for e in layer["edges"])
    assert desc["processes_by_kind"].get("DelayLine", 0) >= 1
    assert_bit_exact(graph, qcfs_residual.batch(3).numpy())


def test_tpp_bit_exact_and_seeded():
    rng = np.random.default_rng(5)
    ir = random_mlp(rng, n_in=10, hidden=(24, 16), levels=(4, 8))
    graph = build(ir, "ttm", neuron="tpp", input_max=2.0, seed=11)
    x = rng.uniform(-0.5, 1.5, (4, 10))
    out_a, counts_a = assert_bit_exact(graph, x)              # the graph's seed (11)
    out_b, counts_b = assert_bit_exact(graph, x, seed=11)
    out_c, counts_c = assert_bit_exact(graph, x, seed=12)
    assert np.array_equal(out_a, out_b)
    assert all(np.array_equal(counts_a[k], counts_b[k]) for k in counts_a)
    assert not all(np.array_equal(counts_a[k], counts_c[k]) for k in counts_a), \
        "another seed should change some spike"


def test_float_mode_matches_reference_float(qcfs_cnn):
    graph = build(import_torch(qcfs_cnn.model, qcfs_cnn.input_shape), "avg-repeat")
    x = qcfs_cnn.batch(3).numpy()
    ref = simulate(graph, x, mode="float")
    out, counts = run_lava(graph, x, fixed_point=False, record_counts=True)
    np.testing.assert_allclose(out, ref.output, rtol=0, atol=1e-9)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop


# ---- build report -------------------------------------------------------------------------
def test_describe_lists_processes_windows_and_synapses(qcfs_cnn):
    graph = build(import_torch(qcfs_cnn.model, qcfs_cnn.input_shape), "avg-repeat")
    net = lower_to_lava(graph)                   # built, never run: nothing forked
    desc = net.describe()
    sched = schedule(graph.copy(), hop_steps=network.SYNAPSE_HOP)
    windows = {layer["name"]: layer["window"] for layer in sched["layers"]}
    assert desc["hop_steps"] == network.SYNAPSE_HOP == 1
    assert desc["steps_per_sample"] == sched["total_steps"]
    assert [layer["name"] for layer in desc["layers"]] == \
        [name for name in windows if graph[name].kind != "input"]
    for layer in desc["layers"]:
        assert layer["window"] == windows[layer["name"]]
        assert sum(layer["processes"].values()) == 1 + sum(
            e["processes"] + (1 if e["align"] else 0) + (1 if e["delay"] else 0)
            for e in layer["edges"])
    assert desc["process_count"] == sum(desc["processes_by_kind"].values())
    synapses = [e["synapse"] for layer in desc["layers"] for e in layer["edges"]]
    # two plain convs -> Conv; pool+flatten+linear and the readout's linear -> Dense
    assert synapses == ["Conv", "Conv", "Dense", "Dense"]
    assert desc["processes_by_kind"]["AlignAvgRepeat"] == 4


def test_lowering_refuses_unquantized_fixed_point(qcfs_mlp):
    graph = convert(import_torch(qcfs_mlp.model, qcfs_mlp.input_shape))
    with pytest.raises(MtdeployError, match="quantize"):
        lower_to_lava(graph, fixed_point=True)


# ---- stopping -----------------------------------------------------------------------------
def test_timeout_ends_the_run_and_its_processes(qcfs_mlp):
    graph = build(import_torch(qcfs_mlp.model, qcfs_mlp.input_shape))
    x = qcfs_mlp.batch(400).numpy()
    before = network.child_pids()
    with pytest.raises(MtdeployError, match="did not finish within"):
        run_lava(graph, x, timeout_s=0.5)
    assert network.child_pids() <= before


def test_keyboard_interrupt_stops_lava(qcfs_mlp):
    graph = build(import_torch(qcfs_mlp.model, qcfs_mlp.input_shape))
    x = qcfs_mlp.batch(2000).numpy()          # far longer than the alarm below

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = network.child_pids()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        with pytest.raises(KeyboardInterrupt):
            run_lava(graph, x, timeout_s=300)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert network.child_pids() <= before


def test_a_failing_process_ends_the_run_with_its_error(qcfs_mlp, monkeypatch):
    """Lava 0.10 hangs when a process model raises; the runner notices the dead process and
    reports its exception instead of waiting for the timeout."""
    from mtdeploy.targets.loihi2.lava.procs import models

    def broken(self):
        raise ZeroDivisionError("neuron model failed on purpose")

    monkeypatch.setattr(models.PyIFNeuronFixed, "run_spk", broken)   # inherited by the fork
    graph = build(import_torch(qcfs_mlp.model, qcfs_mlp.input_shape))
    before = network.child_pids()
    with pytest.raises(MtdeployError, match="ZeroDivisionError: neuron model failed"):
        run_lava(graph, qcfs_mlp.batch(2).numpy(), timeout_s=120)
    assert network.child_pids() <= before


# ---- ladder -------------------------------------------------------------------------------
def test_ladder_agrees_on_every_layer(qcfs_residual):
    graph = build(import_torch(qcfs_residual.model, qcfs_residual.input_shape), "avg-repeat")
    rows = ladder(graph, qcfs_residual.batch(3).numpy())
    pops = [p for p in graph if p.kind in ("qcfs", "readout")]
    assert [r["layer"] for r in rows] == [p.name for p in pops]
    assert all(r["agreement"]["fixed-lava"] == 1.0 for r in rows)
    assert first_divergence(rows, "fixed-lava") is None
    # avg-repeat, T = levels: the float SNN is the QCFS ANN
    assert all(r["agreement"]["ann-float"] == 1.0 for r in rows)
    text = format_ladder(rows)
    assert "readout" in text and "argmax agreement: ann-float 1.0000" in text


def test_ladder_names_the_first_layer_lava_breaks(qcfs_mlp, monkeypatch):
    """Scheduling with a wrong synapse delay misaligns the very first population; the ladder
    must point there, not at the output."""
    graph = build(import_torch(qcfs_mlp.model, qcfs_mlp.input_shape), "avg-repeat")
    schedule(graph, hop_steps=network.SYNAPSE_HOP + 1)     # Lava's synapses take one step
    rows = ladder(graph, qcfs_mlp.batch(4).numpy())
    first = first_divergence(rows, "fixed-lava")
    assert first is not None and first["layer"] == rows[0]["layer"]
    assert rows[0]["first"] or "fixed-lava" in rows[0]["diverges"]
    assert "first divergence" in format_ladder(rows)
