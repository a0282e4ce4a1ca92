"""The TorchScript walker: a ``torch.jit`` archive's graph -> events for the ``GraphBuilder``.

Loading TorchScript runs no code from the file, but a scripted submodule is not an eager
module: ``torch.jit.script`` keeps a layer's constants as attributes, ``torch.jit.trace`` keeps
only parameters and buffers and bakes the rest into the graph. So the walker follows the graph
(``prim::CallMethod`` on submodules, ``aten::`` ops as tensor functions) and each kind's
``from_script`` rebuilds the eager layer, which the builder then checks against the archive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtdeploy.errors import InputError
from mtdeploy.frontends.torch_builder import (IDENTITY_MODULES, DirectParameter, GraphBuilder,
                                              Ref, Special)
from mtdeploy.frontends.torch_files import first_line
from mtdeploy.ir.kind import KINDS
from mtdeploy.kinds.common import ScriptConfigError

__all__ = ["import_script"]


@dataclass
class _ModuleRef:
    """A TorchScript submodule seen through a ``prim::GetAttr`` chain."""

    path: str
    module: torch.jit.ScriptModule


def _script_class_name(module: torch.jit.ScriptModule) -> str:
    """'__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d' -> the Python class path
    'torch.nn.modules.conv.Conv2d' (TorchScript mangles names of re-compiled classes)."""
    qualified = module._c._type().qualified_name()
    parts = [p for p in qualified.split(".")
             if p != "__torch__" and not p.startswith("___torch_mangle")]
    return ".".join(parts)


def _script_types() -> dict[str, tuple[type, Any]]:
    """Qualified class name -> (eager class, its kind or None), for every torch type the
    registry maps plus the identity modules (which need no rebuild)."""
    types = [(cls, kind) for kind in KINDS.values() for cls in kind.torch_types]
    types += [(cls, None) for cls in IDENTITY_MODULES]
    return {f"{cls.__module__}.{cls.__qualname__}": (cls, kind) for cls, kind in types}


_CONTAINER_MODULES = ("Sequential", "ModuleList", "ModuleDict")


class _ScriptWalker:
    """Walks TorchScript graphs, descending into containers and custom submodules."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder
        self.types = _script_types()

    def call(self, ref: _ModuleRef, method: str, args: list) -> Any:
        """A call ``ref.method(*args)``: a layer, a dropped module, an offender, or a container."""
        b = self.builder
        class_name = _script_class_name(ref.module)
        short = class_name.rsplit(".", 1)[-1]
        # torch.jit.trace names the k-th extra call of a module forward1, forward2, ...
        if class_name in self.types and method.startswith("forward"):
            cls, kind = self.types[class_name]
            if kind is None:
                return b.call_module(ref.path, cls(), args, {})
            try:
                eager = kind.from_script(ref.module)
            except InputError as exc:
                return b.unsupported(ref.path, short, str(exc))
            except (ScriptConfigError, RuntimeError, TypeError, ValueError) as exc:
                return b.unsupported(ref.path, short, f"cannot read its configuration from the "
                                                      f"TorchScript archive: {first_line(exc)}")
            out = b.call_module(ref.path, eager, args, {})
            if isinstance(out, Ref):
                b.rebuilt[out.node] = (ref.module, method, eager)
            return out
        if class_name.startswith("torch.nn.") and short not in _CONTAINER_MODULES:
            return b.unsupported(ref.path, short)
        outputs = self.walk(ref, ref.module._c._get_method(method).graph, args)
        return outputs[0] if len(outputs) == 1 else outputs

    def walk(self, ref: _ModuleRef, graph: torch._C.Graph, args: list) -> list:
        b = self.builder
        graph_inputs = list(graph.inputs())
        env: dict[torch._C.Value, Any] = {graph_inputs[0]: ref}
        if len(graph_inputs) - 1 != len(args):
            raise InputError(f"{ref.path or _script_class_name(ref.module)}.forward takes "
                             f"{len(graph_inputs) - 1} inputs; mtdeploy supports exactly one")
        env.update(zip(graph_inputs[1:], args))
        for node in graph.nodes():
            kind = node.kind()
            ins = [env.get(v, Special.POISON) for v in node.inputs()]
            outs = list(node.outputs())
            if kind == "prim::Constant":
                result: Any = outs[0].toIValue() if outs else None
            elif kind == "prim::GetAttr":
                result = self._get_attr(ref, ins[0], node.s("name"))
            elif kind == "prim::CallMethod":
                target = ins[0]
                if not isinstance(target, _ModuleRef):
                    result = b.unsupported(ref.path, f"call of {node.s('name')} on a non-module")
                else:
                    result = self.call(target, node.s("name"), ins[1:])
            elif kind in ("prim::ListConstruct", "prim::TupleConstruct"):
                result = list(ins)
            elif kind in ("prim::ListUnpack", "prim::TupleUnpack"):
                seq = ins[0]
                result = list(seq) if isinstance(seq, list) and len(seq) == len(outs) \
                    else [Special.POISON] * len(outs)
            elif kind in ("prim::If", "prim::Loop"):
                result = b.unsupported(ref.path, kind)
            elif kind.startswith("aten::") or kind in ("prim::NumToTensor",):
                result = b.call_function(ref.path, kind, ins, {})
            else:
                result = b.unsupported(ref.path, kind)
            if len(outs) == 1:
                env[outs[0]] = result
            elif isinstance(result, list) and len(result) == len(outs):
                env.update(zip(outs, result))
            else:
                env.update((o, Special.POISON) for o in outs)
        return [env.get(v, Special.POISON) for v in graph.outputs()]

    def _get_attr(self, ref: _ModuleRef, owner: Any, name: str) -> Any:
        if not isinstance(owner, _ModuleRef):
            return self.builder.unsupported(ref.path, f"attribute {name!r} of a non-module object")
        child = getattr(owner.module, name)
        path = f"{owner.path}.{name}" if owner.path else name
        if isinstance(child, torch.jit.ScriptModule):
            return _ModuleRef(path, child)
        return DirectParameter(path)


def import_script(model: torch.jit.ScriptModule, builder: GraphBuilder) -> Any:
    """Walk ``model.forward``'s TorchScript graph into ``builder``; returns the output."""
    return _ScriptWalker(builder).call(_ModuleRef("", model), "forward", [builder.input])

