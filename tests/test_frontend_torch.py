"""The torch front end: every supported op imports and computes what torch computes, through
torch.fx, torch.jit.trace and torch.jit.script alike; user mistakes become clear errors."""
from __future__ import annotations

import copy
import operator
import re

import numpy as np
import pytest
import torch
from torch import nn

from mtdeploy.io import save_graph  # noqa: E402
from mtdeploy.errors import InputError, UnsupportedOpsError
from mtdeploy.frontends import (graph_from_module, import_torch, load_model_graph, load_torch_model,
                                parse_input_shape)
from mtdeploy.nn import QCFS
from mtdeploy.sim.ann import ann_forward

PATHS = ("fx", "trace", "script")


def as_path(model: nn.Module, path: str, example: torch.Tensor) -> nn.Module:
    if path == "fx":
        return model
    if path == "trace":
        with torch.no_grad():
            return torch.jit.trace(model, example)
    return torch.jit.script(model)


def torch_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eager model evaluated in float64, the precision ann_forward uses."""
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x.double())


def random_bn(*modules: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    c = m.num_features
                    m.running_mean.copy_(torch.randn(c, generator=gen))
                    m.running_var.copy_(torch.rand(c, generator=gen) + 0.2)
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


# ---- models for single ops ----------------------------------------------------------------

class _TwoBranch(nn.Module):
    """Two convolutions merged by ``combine`` (a separate method, so TorchScript calls it)."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(2, 3, 1)
        self.act = QCFS(4, 1.0)

    def forward(self, x):
        return self.act(self.combine(self.conv_a(x), self.conv_b(x)))


class AddPlus(_TwoBranch):
    def combine(self, a, b):
        return a + b


class AddTorch(_TwoBranch):
    def combine(self, a, b):
        return torch.add(a, b)


class AddOperator(_TwoBranch):
    def combine(self, a, b):
        return operator.add(a, b)


class _Head(nn.Module):
    """conv -> ``flat`` -> linear on a (1, 8, 8) input (72 features after the conv)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(72, 5)

    def forward(self, x):
        return self.fc(self.flat(self.conv(x)))


class FlattenTorch(_Head):
    def flat(self, x):
        return torch.flatten(x, 1)


class FlattenView(_Head):
    def flat(self, x):
        return x.view(x.size(0), -1)


class FlattenShape(_Head):
    def flat(self, x):
        return x.reshape(x.shape[0], -1)


class FlattenExplicit(_Head):
    def flat(self, x):
        return x.view(-1, 72)


Seq = nn.Sequential
CONV_FLAT_LINEAR = ["conv", "flatten", "linear"]
TWO_CONVS_ADDED = ["conv", "conv", "add", "qcfs"]

# (id, model factory, input shape, IR kinds after the input, scriptable)
OP_CASES = [
    ("linear", lambda: Seq(nn.Linear(12, 7)), (12,), ["linear"], True),
    ("linear_no_bias", lambda: Seq(nn.Linear(12, 7, bias=False)), (12,), ["linear"], True),
    ("conv", lambda: Seq(nn.Conv2d(2, 4, 3)), (2, 8, 8), ["conv"], True),
    ("conv_stride_padding", lambda: Seq(nn.Conv2d(2, 4, 3, stride=2, padding=1)), (2, 8, 8),
     ["conv"], True),
    ("conv_dilation", lambda: Seq(nn.Conv2d(2, 4, 3, padding=2, dilation=2)), (2, 8, 8),
     ["conv"], True),
    ("conv_groups", lambda: Seq(nn.Conv2d(4, 6, 3, padding=1, groups=2)), (4, 6, 6),
     ["conv"], True),
    ("conv_rectangular",
     lambda: Seq(nn.Conv2d(2, 3, (3, 1), stride=(2, 1), padding=(1, 0), bias=False)),
     (2, 8, 6), ["conv"], True),
    ("batchnorm2d", lambda: Seq(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)), (2, 8, 8),
     ["conv", "batchnorm"], True),
    ("batchnorm1d", lambda: Seq(nn.Linear(12, 6), nn.BatchNorm1d(6)), (12,),
     ["linear", "batchnorm"], True),
    ("avgpool", lambda: Seq(nn.AvgPool2d(2)), (2, 8, 8), ["avgpool"], True),
    ("avgpool_padded",
     lambda: Seq(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
     (2, 7, 7), ["avgpool"], True),
    ("global_avgpool", lambda: Seq(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (3, 5, 5),
     ["avgpool", "flatten"], True),
    ("flatten_module", lambda: Seq(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 5)),
     (1, 8, 8), CONV_FLAT_LINEAR, True),
    ("flatten_torch", FlattenTorch, (1, 8, 8), CONV_FLAT_LINEAR, True),
    ("flatten_view_size0", FlattenView, (1, 8, 8), CONV_FLAT_LINEAR, True),
    ("flatten_reshape_shape0", FlattenShape, (1, 8, 8), CONV_FLAT_LINEAR, True),
    ("flatten_view_explicit", FlattenExplicit, (1, 8, 8), CONV_FLAT_LINEAR, True),
    ("add_plus", AddPlus, (2, 6, 6), TWO_CONVS_ADDED, True),
    ("add_torch", AddTorch, (2, 6, 6), TWO_CONVS_ADDED, True),
    ("add_operator", AddOperator, (2, 6, 6), TWO_CONVS_ADDED, False),  # not scriptable
    ("qcfs", lambda: Seq(nn.Linear(12, 8), QCFS(3, 0.7)), (12,), ["linear", "qcfs"], True),
    ("dropout_identity_removed",
     lambda: Seq(nn.Linear(12, 8), nn.Dropout(0.5), QCFS(2, 1.0), nn.Identity(), nn.Linear(8, 3)),
     (12,), ["linear", "qcfs", "linear"], True),
]


@pytest.mark.parametrize("case, path", [
    pytest.param(case, path, id=f"{case[0]}-{path}")
    for case in OP_CASES for path in PATHS if path != "script" or case[4]])
def test_supported_op_imports_and_matches_torch(case, path):
    _, factory, shape, kinds, _ = case
    torch.manual_seed(0)
    model = factory()
    random_bn(model)
    model.eval()
    x = torch.rand((5, *shape), generator=torch.Generator().manual_seed(1)) * 2 - 0.5
    graph = import_torch(as_path(model, path, x), shape)

    assert [n.kind for n in graph][1:] == kinds
    assert graph.input.attrs["shape"] == list(shape)
    assert graph.output == list(graph.nodes)[-1]
    expected = torch_reference(model, x)
    assert tuple(graph[graph.output].shape) == tuple(expected.shape[1:])
    torch.testing.assert_close(ann_forward(graph, x), expected, rtol=1e-9, atol=1e-9)
    folded = graph_from_module(as_path(model, path, x), shape)
    assert not folded.of_kind("batchnorm")
    torch.testing.assert_close(ann_forward(folded, x), expected, rtol=1e-5, atol=1e-5)


def test_nodes_are_named_after_module_paths(qcfs_residual):
    graph = import_torch(qcfs_residual.model, qcfs_residual.input_shape)
    assert graph.input.name == "input"
    expected = {"stem.0", "stem.2", "conv1.0", "down_skip.0", "fc", "add", "add_2", "flatten"}
    assert expected <= set(graph.nodes)
    assert graph["stem.0"].origin == "stem.0" and graph["stem.0"].kind == "conv"
    assert graph["add"].inputs == ["conv2.1", "stem.2"]
    assert graph.output == "fc"


@pytest.mark.parametrize("path", PATHS)
def test_small_models_match_torch(qcfs_model, path):
    x = qcfs_model.batch(16)
    model = as_path(qcfs_model.model, path, x)
    graph = graph_from_module(model, qcfs_model.input_shape)
    assert not graph.of_kind("batchnorm")
    torch.testing.assert_close(ann_forward(graph, x), torch_reference(qcfs_model.model, x),
                               rtol=1e-5, atol=1e-5)


def _ir_signature(graph):
    return [(n.name, n.kind, n.inputs, n.shape, n.attrs, sorted(n.params)) for n in graph]


def test_torchscript_and_fx_give_the_same_ir(qcfs_model):
    x = qcfs_model.batch(2)
    graphs = {path: import_torch(as_path(qcfs_model.model, path, x), qcfs_model.input_shape)
              for path in PATHS}
    assert graphs["fx"].meta["frontend"] == "torch.fx"
    assert graphs["trace"].meta["frontend"] == graphs["script"].meta["frontend"] == "torchscript"
    reference = _ir_signature(graphs["fx"])
    for path in ("trace", "script"):
        assert _ir_signature(graphs[path]) == reference, path
        for node in graphs["fx"]:
            for name, value in node.params.items():
                np.testing.assert_array_equal(graphs[path][node.name].params[name], value)
    levels = [n.attrs["levels"] for n in graphs["fx"].of_kind("qcfs")]
    assert levels == [m.levels for m in qcfs_model.model.modules() if isinstance(m, QCFS)]


# ---- unsupported ops -----------------------------------------------------------------------

class SigmoidHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.sigmoid(torch.flatten(x, 1)))


class ThreeOffenders(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.LPPool2d(2, 4)
        self.head = SigmoidHead()

    def forward(self, x):
        return self.head(self.pool(self.relu(self.conv(x))))


@pytest.mark.parametrize("path", PATHS)
def test_unsupported_ops_are_all_reported_at_once(path):
    model = ThreeOffenders().eval()
    with pytest.raises(UnsupportedOpsError) as info:
        import_torch(as_path(model, path, torch.zeros(1, 1, 8, 8)), (1, 8, 8))
    offenders = {where: (op, hint) for where, op, hint in info.value.offenders}
    assert set(offenders) == {"relu", "pool", "head"}
    assert offenders["relu"][0] == "ReLU" and "QCFS" in offenders["relu"][1]
    assert offenders["pool"][0] == "LPPool2d" and "AvgPool2d" in offenders["pool"][1]
    assert "sigmoid" in offenders["head"][0] and "QCFS" in offenders["head"][1]
    message = str(info.value)
    assert "3 unsupported op(s)" in message and all(p in message for p in ("relu", "pool", "head"))


class AddsConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + 1.0


class BadReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return x.view(x.size(0), 2, -1)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model_cls, shape, fragment", [
    (AddsConstant, (4,), "tensor + tensor"),
    (BadReshape, (1, 8, 8), "flatten to (batch, features)"),
])
def test_unsupported_function_ops_carry_a_hint(model_cls, shape, fragment, path):
    model = model_cls().eval()
    with pytest.raises(UnsupportedOpsError, match="1 unsupported") as info:
        import_torch(as_path(model, path, torch.zeros(2, *shape)), shape)
    assert fragment in info.value.offenders[0][2]


def test_untraceable_model_suggests_torchscript():
    with pytest.raises(InputError, match="TorchScript"):
        import_torch(Branchy(), (4,))


def test_scripted_control_flow_is_reported():
    with pytest.raises(UnsupportedOpsError) as info:
        import_torch(torch.jit.script(Branchy()), (4,))
    hints = {op: hint for _, op, hint in info.value.offenders}
    assert "control flow" in hints["prim::If"]


@pytest.mark.parametrize("path", PATHS)
def test_unsupported_layer_options_are_reported(path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                          nn.Linear(128, 3)).eval()
    with pytest.raises(InputError, match=r"\b0\b.*(padding_mode|standard Conv2d)"):
        import_torch(as_path(model, path, torch.zeros(1, 1, 8, 8)), (1, 8, 8))


def test_scripted_model_in_training_mode_imports_with_running_stats(qcfs_cnn):
    scripted = torch.jit.script(copy.deepcopy(qcfs_cnn.model).train())
    stats_before = scripted.state_dict()["1.running_mean"].clone()
    graph = graph_from_module(scripted, qcfs_cnn.input_shape)
    x = qcfs_cnn.batch(8)
    torch.testing.assert_close(ann_forward(graph, x), torch_reference(qcfs_cnn.model, x),
                               rtol=1e-5, atol=1e-5)
    assert scripted.training
    torch.testing.assert_close(scripted.state_dict()["1.running_mean"], stats_before,
                               rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_batchnorm_traced_in_training_mode_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(4, 1, 8, 8))
    with pytest.raises(UnsupportedOpsError, match=r"model\.eval\(\)"):
        import_torch(traced, (1, 8, 8))


def test_unused_branches_are_dropped():
    class WithAuxHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.aux = nn.Linear(4, 2)

        def forward(self, x):
            self.aux(x)
            return self.fc(x)

    graph = import_torch(WithAuxHead(), (4,))
    assert list(graph.nodes) == ["input", "fc"]


# ---- input shapes ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape, fragment", [
    ((3, 8, 8), "0 (conv"),          # wrong channel count at the first conv
    ((64,), "0 (conv"),              # a vector where the conv expects C,H,W
    ((1, 1, 1), "6 (avgpool"),       # too small for the pool
])
def test_wrong_input_shape_names_the_layer(qcfs_cnn, shape, fragment):
    with pytest.raises(InputError, match=re.escape(fragment)):
        import_torch(qcfs_cnn.model, shape)


def test_reshape_to_the_wrong_size_names_the_layer():
    class WrongSize(_Head):
        def flat(self, x):
            return x.view(-1, 99)

    with pytest.raises(InputError, match=r"flatten .*\(batch, 99\)"):
        import_torch(WrongSize(), (1, 8, 8))


@pytest.mark.parametrize("text, expected", [("1,8,8", (1, 8, 8)), ("16", (16,)), ("2,24", (2, 24)),
                                            ([3, 32, 32], (3, 32, 32)), ("1x28x28", (1, 28, 28))])
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("bad", ["", "a,b", "1,2,8,8", "0,8", "0,8,8", [1, -2, 3], 7])
def test_parse_input_shape_rejects(bad):
    with pytest.raises(InputError):
        parse_input_shape(bad)


# ---- files -------------------------------------------------------------------------------

def test_pickle_refused_without_trust_and_accepted_with_it(tmp_path, qcfs_cnn):
    path = tmp_path / "pickled.pt"
    torch.save(qcfs_cnn.model, path)
    with pytest.raises(InputError) as info:
        load_torch_model(path)
    assert "--trust-pickle" in str(info.value) and "torch.jit.trace" in str(info.value)
    with pytest.raises(InputError, match="trust-pickle"):
        load_model_graph(path, (1, 8, 8))

    model = load_torch_model(path, trust_pickle=True)
    assert isinstance(model, nn.Sequential)
    graph = load_model_graph(path, (1, 8, 8), trust_pickle=True)
    x = qcfs_cnn.batch(4)
    torch.testing.assert_close(ann_forward(graph, x), torch_reference(qcfs_cnn.model, x),
                               rtol=1e-5, atol=1e-5)


def test_torchscript_file_loads_without_trust(tmp_path, qcfs_residual):
    path = tmp_path / "model.pt"
    x = qcfs_residual.batch(4)
    torch.jit.trace(qcfs_residual.model, x).save(str(path))
    assert isinstance(load_torch_model(path), torch.jit.ScriptModule)
    graph = load_model_graph(path, "1,8,8")
    assert not graph.of_kind("batchnorm") and len(graph.of_kind("add")) == 2
    torch.testing.assert_close(ann_forward(graph, x), torch_reference(qcfs_residual.model, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("content, fragment", [
    ("state_dict", "state_dict"),
    ("tensor", "Tensor, not a model"),
    ("garbage", "not a PyTorch model file"),
    ("empty", "not a PyTorch model file"),
])
def test_unusable_files_give_clear_errors(tmp_path, qcfs_mlp, content, fragment):
    path = tmp_path / "model.pt"
    if content == "state_dict":
        torch.save(qcfs_mlp.model.state_dict(), path)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "garbage":
        path.write_bytes(b"definitely not a model\n" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(InputError, match=fragment):
        load_torch_model(path, trust_pickle=True)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model_graph(tmp_path / "absent.pt", (1, 8, 8))


def test_load_model_graph_dispatch(tmp_path, qcfs_mlp):
    ts = tmp_path / "mlp.pt"
    torch.jit.script(qcfs_mlp.model).save(str(ts))
    with pytest.raises(InputError, match="--input-shape"):
        load_model_graph(ts)
    graph = load_model_graph(ts, (16,))
    assert [n.kind for n in graph] == ["input", "linear", "qcfs", "linear", "qcfs", "linear"]

    ir = tmp_path / "mlp.mtir"
    save_graph(import_torch(qcfs_mlp.model, (16,)), ir)  # unfolded: loading folds it
    reloaded = load_model_graph(ir)
    assert _ir_signature(reloaded) == _ir_signature(graph)
    with pytest.raises(InputError, match="input shape"):
        load_model_graph(ir, (8,))

    with pytest.raises(InputError, match="unknown model file type"):
        load_model_graph(tmp_path / "model.onnx", (16,))
    net = tmp_path / "model.net"
    net.write_bytes(b"not hdf5")
    with pytest.raises(InputError):
        load_model_graph(net)
