"""Front ends: model files and modules -> BN-folded IR graphs.

``load_model_graph`` picks the reader from the file's suffix: PyTorch (``.pt``, ``.pth``,
``.ts``), NetX HDF5 (``.net``), or a saved IR graph (``.mtir``). ``import_torch`` is the torch
entry point: it hands a model to its walker (``torch_fx`` for eager modules, ``torch_script``
for TorchScript), both feeding the one IR builder (``torch_builder``); ``torch_files`` reads
model files safely. BatchNorm is folded here, by the ``fold_bn`` pass, and nowhere else.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.frontends.netx import read_netx
from mtdeploy.frontends.torch_builder import GraphBuilder
from mtdeploy.frontends.torch_files import (TORCHSCRIPT_HOWTO, load_torch_model, parse_input_shape,
                                            stored_input_shape)
from mtdeploy.frontends.torch_fx import import_fx
from mtdeploy.frontends.torch_script import import_script
from mtdeploy.io import load_graph
from mtdeploy.ir.graph import Graph
from mtdeploy.passes.fold_bn import fold_batchnorm

__all__ = ["load_model_graph", "graph_from_module", "import_torch", "load_torch_model",
           "parse_input_shape", "stored_input_shape", "TORCHSCRIPT_HOWTO", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".ts")


def load_model_graph(path, input_shape=None, trust_pickle: bool = False) -> Graph:
    """Read a model file into IR and fold its batchnorms.

    ``input_shape`` (one sample, no batch axis) is required for torch models unless they were
    saved with :func:`mtdeploy.nn.save_traced`, which records it (a given shape wins); for the
    other formats it is optional and, when given, must match the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        # Loaded first, so that a missing, truncated or corrupt file says so rather than
        # asking for an input shape it could never use.
        model = load_torch_model(path, trust_pickle)
        if input_shape is None:
            input_shape = stored_input_shape(path)
            if input_shape is None:
                raise InputError(f"{path}: a PyTorch model needs --input-shape (one sample "
                                 "without the batch axis, e.g. 1,28,28); models saved with "
                                 "mtdeploy.nn.save_traced record it")
        graph = import_torch(model, input_shape)
    elif suffix == ".mtir":
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        graph = load_graph(path)
    elif suffix in (".net", ".h5"):   # NetX, or a build's network.mtsnn.h5 (same layout)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        graph = read_netx(path)
    else:
        raise InputError(f"{path}: unknown model file type {suffix or '(no suffix)'!r}; "
                         f"expected {', '.join(TORCH_SUFFIXES)} (PyTorch), .net (NetX), .mtsnn.h5 "
                         "(a build's MT-SNN) or .mtir (mtdeploy IR)")
    if input_shape is not None and suffix not in TORCH_SUFFIXES:
        wanted = parse_input_shape(input_shape)
        if tuple(graph.input.shape) != wanted:
            raise InputError(f"{path}: the model's input shape is {tuple(graph.input.shape)}, "
                             f"not {wanted}")
    return fold_batchnorm(graph)


def graph_from_module(model, input_shape) -> Graph:
    """An in-memory ``nn.Module`` or TorchScript module -> BN-folded IR."""
    if input_shape is None:
        raise InputError("input_shape is required for a torch model (one sample without the "
                         "batch axis, e.g. (1, 28, 28))")
    return fold_batchnorm(import_torch(model, input_shape))


def import_torch(model: nn.Module, input_shape, name: str | None = None) -> Graph:
    """Build the IR of ``model`` (eager or TorchScript) for one sample of ``input_shape``.

    Node names are the module paths (``features.0``), function ops are named after their op
    within the enclosing module (``layer1.add``). BatchNorm nodes stay; ``fold_batchnorm``
    removes them. Raises ``UnsupportedOpsError`` listing every op that cannot be mapped.
    """
    shape = parse_input_shape(input_shape)
    if isinstance(model, torch.jit.ScriptModule):
        default_name, walker, frontend = model.original_name, import_script, "torchscript"
    elif isinstance(model, nn.Module):
        default_name, walker, frontend = type(model).__name__, import_fx, "torch.fx"
    else:
        raise InputError(f"expected a torch nn.Module or TorchScript module, got "
                         f"{type(model).__name__}")
    builder = GraphBuilder(name or default_name, shape)
    output = walker(model, builder)
    return builder.finish(output, frontend)
