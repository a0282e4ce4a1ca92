"""The torch.fx walker: an eager ``nn.Module`` -> events for the shared ``GraphBuilder``.

The model is traced symbolically with leaves at every module the kind registry maps (and the
identity modules), so each layer arrives as one module call; every other fx node is a tensor
function for the builder's handlers. Models fx cannot trace are pointed to TorchScript.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.frontends.torch_builder import IDENTITY_MODULES, DirectParameter, GraphBuilder
from mtdeploy.frontends.torch_files import TORCHSCRIPT_HOWTO, first_line
from mtdeploy.ir.kind import kind_for_module

__all__ = ["import_fx"]


class _LeafTracer(torch.fx.Tracer):
    """Stops at every module the registry maps (QCFS included) and at every torch.nn layer."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (kind_for_module(m) is not None or isinstance(m, IDENTITY_MODULES)
                or super().is_leaf_module(m, module_qualified_name))


def _fx_scope(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def _fx_function_name(target: Any) -> str:
    return getattr(target, "__name__", str(target))


def import_fx(model: nn.Module, builder: GraphBuilder) -> Any:
    """Trace ``model`` with torch.fx and feed its nodes to ``builder``; returns the output."""
    tracer = _LeafTracer()
    if tracer.is_leaf_module(model, ""):
        return builder.call_module("", model, [builder.input], {})
    try:
        fx_graph = tracer.trace(model)
    except Exception as exc:
        raise InputError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
            f"{first_line(exc)}). Models whose forward branches on tensor values or shapes cannot "
            f"be traced symbolically; save the model as TorchScript ({TORCHSCRIPT_HOWTO}) and "
            f"pass the .pt file instead") from None
    modules = dict(model.named_modules())
    env: dict[torch.fx.Node, Any] = {}
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputError(f"{type(model).__name__}.forward takes {len(placeholders)} inputs; "
                         "mtdeploy supports models with exactly one input tensor")
    output: Any = None
    for node in fx_graph.nodes:
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            env[node] = builder.input
        elif node.op == "call_module":
            env[node] = builder.call_module(node.target, modules[node.target], args, kwargs)
        elif node.op == "call_function":
            env[node] = builder.call_function(_fx_scope(node), _fx_function_name(node.target),
                                              args, kwargs)
        elif node.op == "call_method":
            env[node] = builder.call_function(_fx_scope(node), node.target, args, kwargs)
        elif node.op == "get_attr":
            env[node] = DirectParameter(node.target)
        elif node.op == "output":
            output = args[0]
    return output

