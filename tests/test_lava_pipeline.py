"""Pipelined Lava runs: a new sample every pipelined interval (the longest window), several
samples in flight, must equal one-sample-at-a-time runs and the reference bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lava")

from mtdeploy.frontends import import_torch  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402
from mtdeploy.targets.loihi2.lava import lower_to_lava  # noqa: E402
from mtdeploy.targets.loihi2.lava import network  # noqa: E402
from mtdeploy.targets.loihi2.lava.procs.process import in_flight  # noqa: E402
from mtdeploy.testing import random_mlp  # noqa: E402

pytestmark = pytest.mark.lava


@pytest.fixture(autouse=True, scope="module")
def no_leftover_processes():
    before = network.child_pids()
    yield
    assert not network.child_pids() - before, "Lava left OS processes behind"


def run(graph, x, pipeline, fixed_point=True):
    net = lower_to_lava(graph, fixed_point, x, record_counts=True, pipeline=pipeline)
    with net:
        out = net.run(timeout_s=300)
    return out, net.counts, net.describe()


def assert_same(a, b):
    assert np.array_equal(a[0], b[0])
    assert set(a[1]) == set(b[1])
    for pop in a[1]:
        assert np.array_equal(a[1][pop], b[1][pop]), pop


def test_in_flight_counts_overlapping_samples():
    assert in_flight(0, 8, 8) == 1
    assert in_flight(0, 9, 8) == 2
    assert in_flight(3, 27, 8) == 3


@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_pipelined_residual_equals_sequential_and_reference(qcfs_residual, alignment):
    """The residual's skip edges span more than one interval: their align processes hold
    several samples at once (samples_in_flight > 1), which is what could break."""
    graph = quantize(convert(import_torch(qcfs_residual.model, qcfs_residual.input_shape),
                             ConvertOptions(alignment=alignment, input_max=1.5)))
    x = qcfs_residual.batch(5).numpy()
    piped, seq = run(graph, x, True), run(graph, x, False)
    desc = piped[2]
    sched = schedule(graph.copy(), hop_steps=network.SYNAPSE_HOP)
    assert desc["pipelined"] and desc["sample_interval"] == sched["latency"]["pipeline_interval_steps"]
    assert desc["total_steps"] == desc["sample_interval"] * 4 + desc["steps_per_sample"]
    assert seq[2]["total_steps"] == seq[2]["steps_per_sample"] * 5
    flights = [e["samples_in_flight"] for layer in desc["layers"] for e in layer["edges"]]
    assert max(flights) >= 2
    assert_same(piped, seq)
    ref = simulate(graph, x, mode="fixed")
    assert_same(piped, (ref.output, ref.counts))


def test_pipelined_tpp_and_float_mode(qcfs_cnn):
    rng = np.random.default_rng(2)
    ir = random_mlp(rng, n_in=10, hidden=(12, 8), levels=(4, 2))
    tpp = quantize(convert(ir, ConvertOptions(alignment="ttm", neuron="tpp", input_max=2.0,
                                              seed=3)))
    x = rng.uniform(-0.5, 1.5, (4, 10))
    piped = run(tpp, x, True)
    assert piped[2]["pipelined"]
    ref = simulate(tpp, x, mode="fixed")
    assert_same(piped, (ref.output, ref.counts))

    graph = quantize(convert(import_torch(qcfs_cnn.model, qcfs_cnn.input_shape)))
    xc = qcfs_cnn.batch(3).numpy()
    out, counts, _ = run(graph, xc, True, fixed_point=False)
    flt = simulate(graph, xc, mode="float")
    np.testing.assert_allclose(out, flt.output, rtol=0, atol=1e-9)
    for pop, c in counts.items():
        assert np.array_equal(c, flt.counts[pop]), pop


def test_without_reset_a_run_is_never_pipelined(qcfs_cnn):
    graph = quantize(convert(import_torch(qcfs_cnn.model, qcfs_cnn.input_shape)))
    desc = lower_to_lava(graph, True, qcfs_cnn.batch(2).numpy(), reset=False).describe()
    assert not desc["pipelined"] and desc["sample_interval"] == desc["steps_per_sample"]
