"""BatchNorm folding: exact on random statistics, and refused (naming the layer) where it
would change the network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mtdeploy.errors import InputError, UnsupportedOpsError
from mtdeploy.frontends import import_torch
from mtdeploy.nn import QCFS
from mtdeploy.passes.fold_bn import fold_batchnorm
from mtdeploy.sim.ann import ann_forward


def set_bn_stats(bn: nn.modules.batchnorm._BatchNorm, rng: np.random.Generator) -> None:
    """Statistics far from the identity: small and large variances, negative gammas."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 2, c)))
        bn.running_var.copy_(torch.from_numpy(10.0 ** rng.uniform(-2, 1, c)))
        if bn.affine:
            bn.weight.copy_(torch.from_numpy(rng.uniform(-2, 2, c)))
            bn.bias.copy_(torch.from_numpy(rng.normal(0, 1, c)))


def assert_fold_exact(model: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    model.eval()
    graph = import_torch(model, shape)
    folded = fold_batchnorm(graph)
    assert graph.of_kind("batchnorm"), "the unfolded graph keeps its batchnorm nodes"
    assert not folded.of_kind("batchnorm")
    assert len(folded) == len(graph) - len(graph.of_kind("batchnorm"))
    for node in folded:
        assert all(p.dtype == np.float32 for p in node.params.values())

    x = torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (6, *shape)).astype(np.float32))
    with torch.no_grad():
        expected = model(x).double()
    torch.testing.assert_close(ann_forward(folded, x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ann_forward(folded, x), ann_forward(graph, x), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), groups=st.sampled_from([1, 2]),
       stride=st.integers(1, 2), bias=st.booleans(), affine=st.booleans())
def test_conv_batchnorm2d_fold_is_exact(seed, groups, stride, bias, affine):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias),
                          nn.BatchNorm2d(6, affine=affine))
    set_bn_stats(model[1], np.random.default_rng(seed))
    assert_fold_exact(model, (4, 6, 6), seed)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), features=st.integers(1, 20), bias=st.booleans())
def test_linear_batchnorm1d_fold_is_exact(seed, features, bias):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, features, bias=bias), nn.BatchNorm1d(features))
    set_bn_stats(model[1], np.random.default_rng(seed))
    assert_fold_exact(model, (7,), seed)


def test_fold_inside_a_network_keeps_the_rest(qcfs_cnn):
    graph = import_torch(qcfs_cnn.model, qcfs_cnn.input_shape)
    folded = fold_batchnorm(graph)
    assert [n.kind for n in folded] == [n.kind for n in graph if n.kind != "batchnorm"]
    assert folded["2"].inputs == ["0"]             # QCFS now reads the conv directly
    assert folded.meta["folded_batchnorm"] == {"1": "0", "4": "3", "9": "8"}
    x = qcfs_cnn.batch(16)
    torch.testing.assert_close(ann_forward(folded, x), ann_forward(graph, x), rtol=1e-6, atol=1e-6)


def test_fold_leaves_its_input_untouched(qcfs_mlp):
    graph = import_torch(qcfs_mlp.model, qcfs_mlp.input_shape)
    before = {n.name: {k: v.copy() for k, v in n.params.items()} for n in graph}
    fold_batchnorm(graph)
    assert len(graph.of_kind("batchnorm")) == 2
    for node in graph:
        for k, v in node.params.items():
            np.testing.assert_array_equal(v, before[node.name][k])


def test_batchnorm_at_the_output_folds():
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    set_bn_stats(model[1], np.random.default_rng(3))
    folded = fold_batchnorm(import_torch(model.eval(), (5,)))
    assert folded.output == "0"
    assert_fold_exact(model, (5,), 3)


class BNAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.a(x) + self.b(x))


class ConvFeedsTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = QCFS(4, 1.0)

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn(y)) + y


@pytest.mark.parametrize("model, bn_path, fragment", [
    (BNAfterAdd(), "bn", "after add"),
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(2), nn.BatchNorm2d(3)), "2",
     "after 1 (avgpool"),
    (nn.Sequential(nn.Conv2d(2, 3, 3), QCFS(4, 1.0), nn.BatchNorm2d(3)), "2", "after 1 (qcfs"),
    (nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3)), "0", "after input"),
    (ConvFeedsTwo(), "bn", "also feeds add"),
])
def test_unfoldable_batchnorm_is_reported_with_its_layer(model, bn_path, fragment):
    graph = import_torch(model.eval(), (2, 6, 6))
    with pytest.raises(UnsupportedOpsError) as info:
        fold_batchnorm(graph)
    assert isinstance(info.value, InputError)
    [(where, op, hint)] = info.value.offenders
    assert where == bn_path and fragment in op
    assert "directly after a Conv2d/Linear" in hint


def test_every_unfoldable_batchnorm_is_listed():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3), nn.AvgPool2d(2),
                          nn.BatchNorm2d(3)).eval()
    with pytest.raises(UnsupportedOpsError) as info:
        fold_batchnorm(import_torch(model, (2, 6, 6)))
    assert [where for where, _, _ in info.value.offenders] == ["0", "3"]
