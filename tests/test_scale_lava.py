"""Small versions of the papers' block shapes on Lava (issue 14): each compiles, the compile
report's structural Lava description is what a lowering builds, and the lowered network equals
the reference simulator's fixed point bit for bit (outputs and every population's spikes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("lava")

from mtdeploy.api import compile_model  # noqa: E402
from mtdeploy.nn import QCFS  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402
from mtdeploy.targets.loihi2.lava import describe_lava, lower_to_lava, network, run_lava  # noqa: E402

from test_scale import DownBlock, GlobalPoolHead, compiled, vgg_like  # noqa: E402

pytestmark = pytest.mark.lava


@pytest.fixture(autouse=True, scope="module")
def no_leftover_processes():
    before = network.child_pids()
    yield
    assert not network.child_pids() - before, "Lava left OS processes behind"


def real_input_pool() -> nn.Sequential:
    """The first layer reads the real-valued input through a pool: a composed kernel on
    graded (input_bits-wide) messages."""
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3),
                         QCFS(8, 1.0), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


BLOCKS = {
    "downsample_shortcut": (DownBlock, (2, 9, 9)),
    "global_pool_squeezed": (lambda: GlobalPoolHead("squeeze"), (1, 10, 10)),
    "pool_conv_chain": (vgg_like, (2, 14, 14)),
    "real_input_pool": (real_input_pool, (2, 8, 8)),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_structural_description_is_what_lowering_builds(block, alignment):
    make, shape = BLOCKS[block]
    graph = compiled(make(), shape, alignment)
    assert describe_lava(graph) == lower_to_lava(graph).describe()


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_block_compiles_and_lava_equals_reference_bit_for_bit(block, tmp_path):
    make, shape = BLOCKS[block]
    torch.manual_seed(0)
    build = compile_model(make().eval(), shape, out_dir=tmp_path / "build", input_max=1.0)
    assert {"report.json", "report.md", "schedule.json"} <= set(build.files)
    graph = build.graph
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape))
    ref = simulate(graph, x, mode="fixed")
    out, counts = run_lava(graph, x, fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    assert set(counts) == set(ref.counts)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]), pop
    assert sum(int(c.sum()) for c in counts.values()) > 0, "a silent network proves little"
    synapses = {e["synapse"] for layer in build.report["lava"]["layers"] for e in layer["edges"]}
    assert "Conv" in synapses


def test_identity_shortcut_and_pool_conv_become_conv_processes():
    graph = compiled(DownBlock(), (2, 9, 9))
    desc = describe_lava(graph)
    by_layer = {layer["name"]: layer for layer in desc["layers"]}
    last_act = [name for name in by_layer if name != "readout"][-1]
    assert [e["synapse"] for e in by_layer[last_act]["edges"]] == ["Conv", "Conv"]
    vgg = describe_lava(compiled(vgg_like(), (2, 14, 14)))
    synapses = [e["synapse"] for layer in vgg["layers"] for e in layer["edges"]]
    # conv, pool -> conv, dilated conv; an overlapping pool sums taps beyond 8-bit mantissas
    assert synapses[:3] == ["Conv"] * 3 and synapses[3] != "Conv"


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1)],
                         ids=["2x2", "3x3-s2-p1"])
def test_pool_into_classifier_figures_without_probing_through_its_weights(pool):
    """A pool folded into a dense layer (VGG-16-224's classifier): its rows come from the
    weight rows pulled back through the pool (as a sparse matrix, and by reverse mode where
    there is none), equal to the probed matrix, and so do its figures (counted from the
    weights where the pool's windows do not overlap)."""
    import dataclasses
    from mtdeploy.targets.loihi2.forms import matrix_tail
    from mtdeploy.targets.loihi2.lava.projection import ProbedForm, chw_matrix, edge_form
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), QCFS(4, 1.0), pool, nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 12), QCFS(4, 1.0), nn.Linear(12, 3)).eval()
    from mtdeploy.ir.snn import incoming_edges, populations
    graph = compiled(model, (1, 8, 8))
    probed = [(pop, e.align or e.producer) for pop in populations(graph) if pop.inputs
              for e in incoming_edges(graph, pop)
              if isinstance(edge_form(graph, pop, e.align or e.producer), ProbedForm)]
    assert probed, "the pool + linear edge should need a probe"
    for pop, key in probed:
        tail = matrix_tail(graph, pop, key)
        assert tail is not None and tail.pullback is not None
        overlapping = np.bincount(tail.pullback.indices).max() > 1
        assert overlapping == (pool.kernel_size == 3)
        full = ProbedForm(chw_matrix(graph, pop, key, True)).values_and_counts()
        want = dict(zip(*np.unique(full[0], return_counts=True)))
        want = {k: int(v) for k, v in want.items()}
        for each in (tail, dataclasses.replace(tail, pullback=None)):
            # the rows are the matrix itself (the NetX planner writes them as a dense layer)
            dense = np.concatenate([block for _, block in each.rows(chunk_entries=50)])
            np.testing.assert_array_equal(dense, chw_matrix(graph, pop, key, True).toarray())
            assert dict(zip(*each.values_and_counts(chunk_entries=50))) == want
        fast = ProbedForm(graph=graph, pop=pop, key=key).values_and_counts()
        assert dict(zip(fast[0], fast[1])) == want
