"""The product's central oracle: avg-repeat MT-SNN == QCFS ANN (float), and fixed-point SNN ==
the equally quantized ANN (bit-exact), over random shapes, levels and thresholds."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtdeploy.errors import InputError
from mtdeploy.passes import ConvertOptions, convert, quantize
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import simulate
from mtdeploy.testing import LEVEL_CHOICES, random_cnn, random_mlp, random_residual

BUILDERS = {"mlp": random_mlp, "cnn": random_cnn, "residual": random_residual}
levels = st.lists(st.sampled_from(LEVEL_CHOICES), min_size=3, max_size=3)


def _inputs(graph, rng, n=64):
    return rng.uniform(0, 1, (n, *graph.input.shape))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(sorted(BUILDERS)), seed=st.integers(0, 2**31), lv=levels)
def test_float_avg_repeat_equals_qcfs_ann(arch, seed, lv):
    rng = np.random.default_rng(seed)
    graph = BUILDERS[arch](rng, levels=lv)
    x = _inputs(graph, rng)
    ann = ann_forward(graph, x).numpy()
    snn = simulate(convert(graph), x, mode="float")
    np.testing.assert_allclose(snn.output, ann, rtol=0, atol=1e-9)
    assert np.array_equal(snn.output.argmax(1), ann.argmax(1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(sorted(BUILDERS)), seed=st.integers(0, 2**31), lv=levels,
       v_init=st.sampled_from([0.5, 0.0]))
def test_fixed_point_equals_quantized_ann_exactly(arch, seed, lv, v_init):
    rng = np.random.default_rng(seed)
    graph = quantize(convert(BUILDERS[arch](rng, levels=lv), ConvertOptions(v_init=v_init)))
    x = _inputs(graph, rng)
    fixed = simulate(graph, x, mode="fixed")
    oracle = simulate(graph, x, mode="ann-int")
    assert np.array_equal(fixed.output, oracle.output)
    for pop, counts in oracle.counts.items():
        assert np.array_equal(fixed.counts[pop], counts), pop


def test_every_T_change_gets_an_align_node_with_its_method():
    rng = np.random.default_rng(1)
    graph = random_residual(rng, levels=[2, 8, 4])
    avg = convert(graph, ConvertOptions(alignment="avg-repeat"))
    ttm = convert(graph, ConvertOptions(alignment="ttm"))
    # avg-repeat aligns every population edge; ttm only where T changes (input edge repeats).
    for g in (avg, ttm):
        for node in g.of_kind("align"):
            src = g[node.inputs[0]]
            assert node.attrs["t_in"] == src.T
    assert all(n.attrs["method"] == "avg-repeat" for n in avg.of_kind("align"))
    ttm_edges = {(n.inputs[0], n.attrs["t_in"], n.attrs["t_out"]) for n in ttm.of_kind("align")
                 if n.attrs["method"] == "ttm"}
    assert all(t_in != t_out for _, t_in, t_out in ttm_edges)
    # the residual add receives two inputs with different T: both are aligned
    assert len([e for e in ttm_edges if e[1] != e[2]]) >= 3


def test_none_alignment_rejects_T_changes_and_names_the_edge():
    graph = random_mlp(np.random.default_rng(0), levels=[2, 4])
    with pytest.raises(InputError, match="T=2.*T=4"):
        convert(graph, ConvertOptions(alignment="none"))
    same = convert(graph, ConvertOptions(alignment="none", timesteps=4))
    assert [n.attrs["method"] for n in same.of_kind("align")] == ["avg-repeat"]  # input edge only


def test_timesteps_override_per_layer_and_unknown_layer():
    graph = random_mlp(np.random.default_rng(0), levels=[2, 4])
    acts = [n.name for n in graph.of_kind("qcfs")]
    g = convert(graph, ConvertOptions(timesteps={acts[0]: 16}))
    assert [g[a].T for a in acts] == [16, 4]
    with pytest.raises(InputError, match="unknown activation"):
        convert(graph, ConvertOptions(timesteps={"nope": 3}))


def test_ttm_boundaries_and_totals():
    from mtdeploy.kinds.align import ttm_boundaries

    assert ttm_boundaries(8, 3) == [0, 3, 5, 8]   # round(8/3)=3, round(16/3)=5
    assert ttm_boundaries(4, 2) == [0, 2, 4]


def test_tpp_is_deterministic_given_seed_and_differs_across_seeds():
    rng = np.random.default_rng(3)
    graph = random_mlp(rng, levels=[8, 8])
    x = _inputs(graph, rng)
    g0 = quantize(convert(graph, ConvertOptions(neuron="tpp", seed=0)))
    a = simulate(g0, x, mode="fixed")
    b = simulate(g0, x, mode="fixed")
    c = simulate(g0, x, mode="fixed", seed=1)
    pop = graph.of_kind("qcfs")[0].name
    assert np.array_equal(a.counts[pop], b.counts[pop])
    assert not np.array_equal(a.counts[pop], c.counts[pop])


def test_tpp_expected_count_matches_charge():
    """E[count] = clip(v/th, 0, T): check the empirical mean over many samples."""
    from mtdeploy.ir.graph import Node
    from mtdeploy.kinds import NEURONS
    import torch

    tpp = NEURONS["tpp"].simulate

    node = Node("p", "qcfs", [], {"levels": 8, "neuron": "tpp"}, {"threshold": np.float32(1.0)})
    t, n = 8, 4000
    current = torch.full((t, n, 1), 0.4, dtype=torch.float64)   # charge 3.2 thresholds
    out = tpp(node, current, False, {"seed": 7, "sample_ids": np.arange(n)})
    assert abs(out.sum(0).mean().item() - 3.2) < 0.05
    assert out.sum(0).max().item() <= t


def test_synops_are_counted():
    rng = np.random.default_rng(0)
    graph = convert(random_cnn(rng, levels=[4, 4]))
    res = simulate(graph, _inputs(graph, rng, 8), mode="float")
    assert res.total_synops > 0


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("lv", [[3, 5, 6], [12, 3, 1], [6, 6, 7]])
def test_levels_that_are_not_powers_of_two_are_exact(arch, lv):
    """The search may choose any T (finer than powers of two): 1/T is then no shift, but
    avg-repeat still reproduces the ANN, and fixed point the equally quantized ANN."""
    rng = np.random.default_rng(sum(lv))
    graph = BUILDERS[arch](rng, levels=lv)
    x = _inputs(graph, rng)
    snn = convert(graph)
    np.testing.assert_allclose(simulate(snn, x, mode="float").output,
                               ann_forward(graph, x).numpy(), rtol=0, atol=1e-9)
    quantize(snn)
    assert np.array_equal(simulate(snn, x, mode="fixed").output,
                          simulate(snn, x, mode="ann-int").output)
