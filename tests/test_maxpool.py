"""Max pooling (kinds/pool.py ``maxpool``): exact with average-and-repeat alignment, where the
consumer holds each producer neuron's whole-window spike count; refused for ttm/none; Lava
runs it bit for bit as the reference; NetX keeps it in the extension."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from mtdeploy.api import compile_model, load_build
from mtdeploy.errors import InputError
from mtdeploy.frontends import graph_from_module
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import simulate

INPUT_SHAPE = (3, 12, 12)


def stem_net(seed: int = 0) -> nn.Module:
    """A torchvision-style ResNet stem (conv 7x7 s2 -> BN -> QCFS -> MaxPool 3x3 s2 p1), a
    conv block, a global max pool and a classifier."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(4), QCFS(4, 0.6),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        nn.Conv2d(4, 5, 3, padding=1), QCFS(8, 0.5),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    return randomize_batchnorm(model, seed).eval()


def batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *INPUT_SHAPE), generator=torch.Generator().manual_seed(seed))


def test_resnet_stem_imports_the_same_from_eager_and_torchscript():
    model = stem_net()
    eager = graph_from_module(model, INPUT_SHAPE)
    traced = graph_from_module(torch.jit.trace(model, batch(1)), INPUT_SHAPE)
    assert [n.kind for n in eager] == [n.kind for n in traced]
    pools = [n for n in traced if n.kind == "maxpool"]
    assert [p.attrs["global"] for p in pools] == [False, True]
    assert pools[0].attrs["kernel"] == [3, 3] and pools[0].attrs["stride"] == [2, 2] \
        and pools[0].attrs["padding"] == [1, 1]
    x = batch(4)
    want = model.double()(x.double()).detach().numpy()
    for g in (eager, traced):
        np.testing.assert_allclose(ann_forward(g, x).numpy(), want, rtol=0, atol=1e-9)


def test_float_snn_equals_the_ann_and_fixed_point_the_quantized_ann():
    graph = graph_from_module(stem_net(1), INPUT_SHAPE)
    snn = convert(graph, ConvertOptions(input_max=1.0))
    x = batch(8, seed=2)
    res = simulate(snn, x, mode="float")
    np.testing.assert_allclose(res.output, ann_forward(snn, x).numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.output, stem_net(1).double()(x.double()).detach().numpy(),
                               rtol=0, atol=1e-6)
    q = quantize(snn)
    fixed = simulate(q, x, mode="fixed")
    assert np.array_equal(fixed.output, simulate(q, x, mode="ann-int").output)
    assert all(c.sum() > 0 for c in fixed.counts.values())


@pytest.mark.parametrize("alignment", ["ttm", "none"])
def test_step_by_step_alignments_are_refused(alignment):
    graph = graph_from_module(stem_net(), INPUT_SHAPE)
    with pytest.raises(InputError, match="max pooling is exact only on whole-window spike"):
        convert(graph, ConvertOptions(alignment=alignment, timesteps=4))


def test_compile_keeps_maxpool_in_the_extension_and_reads_back_exactly(tmp_path):
    model = stem_net(3)
    path = tmp_path / "stem.pt"
    save_traced(model, batch(2), path)
    build = compile_model(str(path), target="loihi2", out_dir=tmp_path / "build", input_max=1.0)
    assert "network.mtsnn.h5" in build.files       # stock NetX has no max pool layer
    assert "max pool" in str(build.report["netx"])
    graph = load_build(tmp_path / "build")
    x = batch(5, seed=4)
    np.testing.assert_allclose(simulate(graph, x, mode="float").output,
                               model.double()(x.double()).detach().numpy(), rtol=0, atol=1e-6)
    assert build.check.fits


@pytest.mark.lava
def test_lava_fixed_point_equals_the_reference_bit_for_bit():
    from mtdeploy.targets.loihi2.lava import child_pids, describe_lava, run_lava

    before = child_pids()
    snn = quantize(convert(graph_from_module(stem_net(4), INPUT_SHAPE),
                           ConvertOptions(input_max=1.0)))
    schedule(snn)
    kinds = describe_lava(snn)["processes_by_kind"]
    assert kinds["MaxPool"] == 2 and kinds["AlignAvgRepeat"] == 3
    x = batch(3, seed=6).numpy()
    ref = simulate(snn, x, mode="fixed")
    for pipeline in (True, False):
        out, counts = run_lava(snn, x, fixed_point=True, record_counts=True, timeout_s=300,
                               pipeline=pipeline)
        assert np.array_equal(out, ref.output)
        for pop, c in counts.items():
            assert np.array_equal(c, ref.counts[pop]), pop
            assert c.sum() > 0, pop
    assert child_pids() - before == set()


def test_lava_refuses_maxpool_in_float_mode_with_a_clear_message():
    pytest.importorskip("lava")
    from mtdeploy.targets.loihi2.lava import lower_to_lava

    snn = convert(graph_from_module(stem_net(), INPUT_SHAPE), ConvertOptions(input_max=1.0))
    with pytest.raises(InputError, match="only the fixed-point models have it"):
        lower_to_lava(snn, fixed_point=False, x=batch(1).numpy())


class StemBlock(nn.Module):
    """The ResNet stem's max pool feeding a basic block: the pooled counts reach the block's
    conv and, through the identity shortcut, the residual add (a branch with a gain)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 7, stride=2, padding=3), QCFS(4, 0.6),
                                  nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), QCFS(4, 0.5),
                                  nn.Conv2d(4, 4, 3, padding=1))
        with torch.no_grad():
            self.body[0].bias.add_(0.3)     # keep the block's first layer firing
        self.act = QCFS(4, 0.7)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        s = self.stem(x)
        return self.head(self.act(self.body(s) + s))


@pytest.mark.lava
def test_lava_runs_a_maxpool_feeding_a_residual_shortcut_bit_for_bit():
    from mtdeploy.targets.loihi2.lava import run_lava

    snn = quantize(convert(graph_from_module(StemBlock().eval(), INPUT_SHAPE),
                           ConvertOptions(input_max=1.0)))
    x = batch(2, seed=8)
    np.testing.assert_allclose(simulate(snn, x, mode="float").output,
                               StemBlock().eval().double()(x.double()).detach().numpy(),
                               rtol=0, atol=1e-6)
    ref = simulate(snn, x.numpy(), mode="fixed")
    out, counts = run_lava(snn, x.numpy(), fixed_point=True, record_counts=True, timeout_s=300)
    assert np.array_equal(out, ref.output)
    for pop, c in counts.items():
        assert np.array_equal(c, ref.counts[pop]) and c.sum() > 0, pop
