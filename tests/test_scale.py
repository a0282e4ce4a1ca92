"""Compiling at scale (issue 14): the forms an edge is stored in, the structural Lava
description, pure reshapes in the torch front end, and the copies and budgets that bound a
large compile. Small versions of the papers' block shapes; the Lava runs are in
tests/test_scale_lava.py."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from mtdeploy.api import compile_model, load_model
from mtdeploy.errors import UnsupportedOpsError
from mtdeploy.frontends import graph_from_module, import_torch
from mtdeploy.ir.snn import incoming_edges, is_source, populations
from mtdeploy.nn import QCFS
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule
from mtdeploy.passes.quantize import _mantissa
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import tree_int_forward
from mtdeploy.targets.loihi2.forms import ConvForm, composed_conv, probed_matrix
from mtdeploy.targets.loihi2.lava.projection import (ProbedForm, WeightForm, edge_form,
                                                     edge_matrix, matrix_figures,
                                                     to_lava_matrix, weight_digits)
from mtdeploy.targets.loihi2.netx.plan import plan_netx
from mtdeploy.targets.partition import interchip, place_fm, place_greedy


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class DownBlock(nn.Module):
    """A ResNet basic block that halves the map: conv-BN-QCFS-conv-BN + 1x1 conv-BN shortcut."""

    def __init__(self, c_in: int = 3, c_out: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, c_in, 3, padding=1), _bn(c_in), QCFS(4, 1.0))
        self.main = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), _bn(c_out),
                                  QCFS(4, 1.0), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  _bn(c_out))
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False), _bn(c_out))
        self.ident = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1), _bn(c_out))
        self.act, self.act2 = QCFS(8, 1.0), QCFS(4, 1.0)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(c_out, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.act(self.main(x) + self.skip(x))
        y = self.act2(self.ident(y) + y)                   # an identity shortcut with a gain
        return self.fc(torch.flatten(self.pool(y), 1))


class GlobalPoolHead(nn.Module):
    """Global pooling of a large map into the classifier, squeezed (MTT's head)."""

    def __init__(self, squeeze: str = "squeeze"):
        super().__init__()
        self.squeeze = squeeze
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), _bn(3), QCFS(4, 1.0),
                                  nn.Conv2d(3, 4, 3, padding=1), _bn(4), QCFS(4, 1.0),
                                  nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.body(x)
        if self.squeeze == "squeeze":
            x = x.squeeze()
        elif self.squeeze == "squeeze_dims":
            x = x.squeeze(-1).squeeze(-1)
        elif self.squeeze == "flatten_squeeze":
            x = torch.flatten(x, 2).squeeze(2)
        else:
            x = torch.flatten(x, 1)
        return self.fc(x)


def vgg_like() -> nn.Sequential:
    """VGG's pool -> conv trees (one pool with overlapping windows before a dilated conv), a
    dilated conv alone, and the flattened classifier."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), _bn(3), QCFS(4, 1.0), nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), _bn(4), QCFS(8, 1.0),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2), _bn(4), QCFS(4, 1.0),
        nn.AvgPool2d(3, stride=1), nn.Conv2d(4, 5, 3, dilation=2), _bn(5), QCFS(4, 1.0),
        nn.Flatten(), nn.Linear(5, 3))


def compiled(model: nn.Module, shape, alignment: str = "avg-repeat"):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    g = quantize(convert(graph_from_module(model.eval(), shape),
                         ConvertOptions(alignment=alignment, input_max=1.0)))
    schedule(g, 1)
    return g


def edges(graph):
    for pop in populations(graph):
        if not is_source(pop):
            for e in incoming_edges(graph, pop):
                yield pop, e.align or e.producer


CASES = [(DownBlock, (2, 9, 9)), (GlobalPoolHead, (1, 10, 10)), (vgg_like, (2, 14, 14))]


# ---- forms -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, shape", CASES)
@pytest.mark.parametrize("alignment", ["avg-repeat", "ttm"])
def test_every_form_is_the_probed_matrix(make, shape, alignment):
    """Each edge's form (a composed kernel, a weight matrix, or the probed matrix) holds the
    very matrix basis vectors pushed through the reference tree give, and its figures (non-
    zeros, largest weight, non-zeros per base-256 digit) are the materialised matrix's."""
    graph = compiled(make(), shape, alignment)
    kinds = set()
    for pop, key in edges(graph):
        form = edge_form(graph, pop, key)
        kinds.add(type(form).__name__)
        want = edge_matrix(graph, pop, key, True)
        got = to_lava_matrix(form.matrix(), pop.shape, graph[key].shape)
        assert (want != got).nnz == 0, (pop.name, key, type(form).__name__)
        fig = matrix_figures(*form.values_and_counts())
        digits = weight_digits(want)
        assert fig.nnz == want.nnz and fig.max_abs == np.abs(want.data).max(initial=0)
        assert fig.digits == [(k, d.nnz) for k, d in digits if d.nnz] or want.nnz == 0
    assert "ConvForm" in kinds


def test_local_trees_compose_into_one_kernel():
    """pool -> conv (a 6x6 kernel of stride 2), an overlapping pool before a dilated conv (7x7),
    a strided 1x1 shortcut, and identity shortcuts with their gain (depthwise 1x1)."""
    graph = compiled(DownBlock(), (2, 9, 9))
    convs = [f for pop, key in edges(graph) for f in [composed_conv(graph, pop, key)] if f]
    assert any(f.groups > 1 and f.weight.shape[2:] == (1, 1) for f in convs), "identity"
    assert any(f.stride == (2, 2) and f.weight.shape[2:] == (1, 1) for f in convs), "1x1 skip"
    vgg = compiled(vgg_like(), (2, 14, 14))
    found = {(tuple(f.weight.shape[2:]), f.stride) for pop, key in edges(vgg)
             for f in [composed_conv(vgg, pop, key)] if f is not None}
    assert {((6, 6), (2, 2)), ((7, 7), (1, 1)), ((5, 5), (1, 1))} <= found, found


def test_a_kernel_that_differs_at_the_border_is_refused():
    """A stride-2 pool over an odd map drops its last row; a conv after it reading that
    padding row would see input under one composed kernel: the crop check must refuse it."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), QCFS(4, 1.0), nn.AvgPool2d(2),
                          nn.Conv2d(2, 2, 3, padding=1), QCFS(4, 1.0), nn.Flatten(),
                          nn.Linear(2 * 3 * 3, 2))
    graph = compiled(model, (1, 7, 7))
    pop = graph[[p.name for p in populations(graph)][2]]
    key = incoming_edges(graph, pop)[0].align
    assert composed_conv(graph, pop, key) is None
    assert isinstance(edge_form(graph, pop, key), ProbedForm)


def test_conv_form_counts_taps_inside_the_map():
    rng = np.random.default_rng(0)
    w = rng.integers(-300, 300, (3, 2, 3, 3))
    w[0, 0, 1, 1] = 0
    form = ConvForm(w, (2, 1), (1, 0), 1, (2, 5, 6), (3, 3, 4))
    m = form.matrix()
    x = rng.integers(-5, 5, (4, 2, 5, 6)).astype(np.float64)
    want = torch.nn.functional.conv2d(torch.as_tensor(x), torch.as_tensor(w, dtype=torch.float64),
                                      None, (2, 1), (1, 0)).reshape(4, -1).numpy()
    assert np.array_equal(x.reshape(4, -1) @ m.T.toarray(), want)
    fig = matrix_figures(*form.values_and_counts())
    assert fig.nnz == m.nnz
    assert fig.digits == [(k, d.nnz) for k, d in weight_digits(sp.csr_matrix(m))]


def test_probing_by_rows_equals_probing_by_columns():
    rng = np.random.default_rng(1)
    a = torch.as_tensor(rng.integers(-3, 4, (5, 40)), dtype=torch.float64)

    def tree(x):
        return x.reshape(x.shape[0], -1) @ a.T

    by_rows = probed_matrix(tree, (2, 4, 5), 5)                 # 5 outputs < 40 inputs
    by_cols = probed_matrix(lambda x: tree(x).repeat(1, 9), (2, 4, 5), 45)
    assert np.array_equal(by_rows.toarray(), a.numpy())
    assert np.array_equal(by_cols.toarray()[:5], a.numpy())


def test_tree_forward_skips_other_branches():
    """One edge's integer tree equals the whole tree with every other edge zero."""
    graph = compiled(DownBlock(), (2, 9, 9))
    for pop in populations(graph):
        keys = [e.align or e.producer for e in incoming_edges(graph, pop)]
        if len(keys) < 2:
            continue
        x = torch.as_tensor(np.random.default_rng(2).integers(0, 3, (2, *graph[keys[0]].shape)),
                            dtype=torch.float64)
        zeros = {k: torch.zeros((2, *graph[k].shape), dtype=torch.float64) for k in keys[1:]}
        assert torch.equal(tree_int_forward(graph, pop.name, {keys[0]: x}),
                           tree_int_forward(graph, pop.name, {keys[0]: x, **zeros}))


def test_classifier_edge_is_its_weight_matrix():
    graph = compiled(vgg_like(), (2, 14, 14))
    readout = graph[graph.output]
    key = incoming_edges(graph, readout)[0].align
    form = edge_form(graph, readout, key)
    assert isinstance(form, WeightForm)


# ---- NetX ------------------------------------------------------------------------------------
def test_netx_writes_pool_conv_trees_as_conv_layers():
    """Composed kernels become NetX conv layers; a dilated conv alone keeps its own form."""
    graph = compiled(vgg_like(), (2, 14, 14))
    plan = plan_netx(graph)
    types = [layer["type"] for layer in plan.layers]
    assert types == ["input", "conv", "conv", "conv", "conv", "flatten", "dense"], types
    pool_conv, dilated, overlapping = plan.layers[2:5]
    assert pool_conv["weight"].shape[2:] == (6, 6) and list(pool_conv["stride"]) == [2, 2]
    assert list(dilated["dilation"]) == [2, 2] and dilated["weight"].shape[2:] == (3, 3)
    assert list(overlapping["dilation"]) == [1, 1] and overlapping["weight"].shape[2:] == (7, 7)


# ---- front end -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["squeeze", "squeeze_dims", "flatten_squeeze"])
@pytest.mark.parametrize("path", ["fx", "trace"])
def test_pure_flattening_squeezes_import_as_flatten(how, path):
    model = GlobalPoolHead(how).eval()
    x = torch.rand(3, 1, 10, 10)
    src = model if path == "fx" else torch.jit.trace(model, x[:2])
    graph = import_torch(src, (1, 10, 10))
    plain = import_torch(GlobalPoolHead("flatten").eval(), (1, 10, 10))
    assert [n.kind for n in graph if n.kind != "flatten"] == \
        [n.kind for n in plain if n.kind != "flatten"]
    with torch.no_grad():
        want = model(x).double()
    np.testing.assert_allclose(ann_forward(graph, x.numpy()), want, rtol=1e-5, atol=1e-5)


class SqueezeMap(nn.Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim
        self.conv, self.act = nn.Conv2d(1, 2, 3, padding=1), QCFS(4, 1.0)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = x.squeeze() if self.dim is None else x.squeeze(self.dim)
        return self.head(x.reshape(x.shape[0], -1) if self.dim == 0 else x)


@pytest.mark.parametrize("dim, fragment", [(None, "gives (batch, 2, 4, 4)"),
                                           (0, "squeezes the batch axis")])
def test_squeeze_that_does_not_flatten_names_the_layer(dim, fragment):
    with pytest.raises(UnsupportedOpsError) as info:
        import_torch(SqueezeMap(dim).eval(), (1, 4, 4))
    (where, op, hint), = info.value.offenders
    assert op.startswith("squeeze") and fragment in hint
    if dim is None:
        assert "before head" in hint


# ---- bounded copies and budgets --------------------------------------------------------------
def test_graph_copies_share_parameters_and_passes_never_write_into_them(tmp_path):
    graph = load_model(DownBlock().eval(), (2, 9, 9))
    before = {(n.name, k): v.copy() for n in graph for k, v in n.params.items()}
    copy = graph.copy()
    assert all(copy[n].params[k] is graph[n].params[k] for n, k in before)
    compile_model(graph, out_dir=tmp_path / "b", input_max=1.0)
    assert all(np.array_equal(graph[n].params[k], v) for (n, k), v in before.items())


def test_blocked_rounding_equals_rounding_at_once():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (37, 11)).astype(np.float32)
    whole, s1 = _mantissa(w, 127, 97.3)
    blocked, s2 = _mantissa(w, 127, 97.3, block=5)
    assert s1 == s2 and np.array_equal(whole, blocked) and whole.dtype == np.int32
    expect = np.clip(np.round(w.astype(np.float64) * 97.3 / 2.0 ** s1), -127, 127)
    assert np.array_equal(whole, expect)


def test_large_linear_integer_forward_in_row_blocks(monkeypatch):
    """A linear node above INT_BLOCK weights multiplies a block of rows at a time (no float64
    copy of a whole classifier) and gets the very product of the whole matrix."""
    import mtdeploy.kinds.linear as linear
    from mtdeploy.ir.graph import Node
    from mtdeploy.ir.kind import kind_of
    rng = np.random.default_rng(6)
    w = rng.integers(-127, 128, (23, 40)).astype(np.int32)
    node = Node("fc", "linear", ["x"], {"in_features": 40, "out_features": 23},
                {"weight_int": w}, (23,))
    x = torch.as_tensor(rng.integers(0, 9, (3, 40)), dtype=torch.float64)
    whole = kind_of(node).forward_int(node, x)
    monkeypatch.setattr(linear, "INT_BLOCK", 90)       # blocks of 2 rows, the last one short
    blocked = kind_of(node).forward_int(node, x)
    assert torch.equal(whole, x @ torch.as_tensor(w, dtype=torch.float64).T)
    assert torch.equal(blocked, whole)


def test_fm_work_and_size_bounds_keep_a_valid_placement():
    rng = np.random.default_rng(4)
    t = sp.random(60, 60, density=0.2, random_state=5, data_rvs=lambda n: rng.uniform(1, 9, n))
    t = sp.csr_matrix(t)
    greedy = place_greedy(t, 4, 16)
    full = place_fm(t, 4, 16)
    short = place_fm(t, 4, 16, max_work=60 * 4)
    none = place_fm(t, 4, 16, max_links=10)
    for part in (full, short, none):
        assert np.bincount(part, minlength=4).max() <= 16
    assert np.array_equal(none, greedy)
    assert interchip(t, full) <= interchip(t, short) <= interchip(t, greedy)
