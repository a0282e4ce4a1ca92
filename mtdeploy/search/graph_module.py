"""An ``nn.Module`` view of an IR graph: what the timestep search trains and what it ships.

The search needs autograd through the QCFS activations (to fine-tune thresholds, optionally
weights, with the straight-through floor) and it must hand back a model file that the torch
front end re-imports as the same IR. So every node whose kind has a torch module type becomes
a real module of that type (``nn.Conv2d``, ``nn.Linear``, ``mtdeploy.nn.QCFS``, pools, flatten),
which is what ``torch.jit.trace`` records and the front end recognises; kinds without a module
type (``add``) run their registry entry's ``forward`` inline, which traces to plain aten ops.
Each kind's ``to_module`` / ``write_back`` (the inverse of its ``from_torch``) builds and reads
these modules.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import is_population, is_source
from mtdeploy.nn import QCFS, save_traced
from mtdeploy.passes.fold_bn import fold_batchnorm


def _attribute_name(node_name: str, taken: set[str], owner: nn.Module) -> str:
    """A valid, unique submodule name for a node (module paths like 'features.0' -> 'features_0')."""
    base = re.sub(r"\W", "_", node_name) or "node"
    if base[0].isdigit():
        base = f"n_{base}"
    name, k = base, 1
    while name in taken or hasattr(owner, name):
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


class GraphModule(nn.Module):
    """The QCFS ANN of a pre-conversion IR graph as trainable torch modules.

    ``levels``/``set_levels`` read and change each QCFS layer's levels (= its SNN time steps);
    ``thresholds`` are the QCFS ``threshold`` parameters; ``to_graph()`` writes weights, levels
    and thresholds back into a copy of the IR graph.
    """

    def __init__(self, graph: Graph):
        super().__init__()
        if graph.meta.get("converted"):
            raise InputError("GraphModule takes the imported (pre-conversion) graph, not a "
                             "converted MT-SNN graph")
        graph = fold_batchnorm(graph)
        graph.validate()
        self.graph = graph
        self._steps: list[tuple[str, str | None, tuple[str, ...]]] = []  # (node, submodule, inputs)
        self._qcfs: dict[str, str] = {}      # node name -> submodule name
        taken: set[str] = set(dict(self.named_children()))
        for node in graph:
            kind = kind_of(node)
            if is_source(node):
                continue
            if kind.role not in ("linear", "activation"):
                raise InputError(f"{node.label()}: GraphModule takes pre-conversion graphs only")
            module = kind.to_module(node)
            attr = None
            if module is not None:
                attr = _attribute_name(node.name, taken, self)
                self.add_module(attr, module)
                if isinstance(module, QCFS):
                    self._qcfs[node.name] = attr
            elif is_population(node):
                raise InputError(f"{node.label()}: no torch form for node kind {node.kind!r}")
            self._steps.append((node.name, attr, tuple(node.inputs)))
        self._input = graph.input.name
        self._output = graph.output

    # ---- evaluation ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, keep_activations=False)[0]

    def forward_with_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Output plus every QCFS layer's output (what the SynOps count needs)."""
        return self._run(x, keep_activations=True)

    def _run(self, x, keep_activations: bool):
        values: dict[str, torch.Tensor] = {self._input: x}
        acts: dict[str, torch.Tensor] = {}
        for name, attr, inputs in self._steps:
            xs = [values[i] for i in inputs]
            if attr is not None:
                values[name] = getattr(self, attr)(*xs)
            else:
                values[name] = kind_of(self.graph[name]).forward(self.graph[name], *xs)
            if keep_activations and name in self._qcfs:
                acts[name] = values[name]
        return values[self._output], acts

    # ---- levels and thresholds ---------------------------------------------------------------
    @property
    def qcfs_layers(self) -> dict[str, QCFS]:
        """QCFS node name -> its module, in topological order."""
        return {name: getattr(self, attr) for name, attr in self._qcfs.items()}

    @property
    def levels(self) -> dict[str, int]:
        return {name: int(m.levels) for name, m in self.qcfs_layers.items()}

    def set_levels(self, levels: dict[str, int] | int) -> None:
        layers = self.qcfs_layers
        if isinstance(levels, int):
            levels = {name: levels for name in layers}
        unknown = sorted(set(levels) - set(layers))
        if unknown:
            raise InputError(f"unknown QCFS layers {unknown}; known: {list(layers)}")
        for name, value in levels.items():
            if int(value) < 1:
                raise InputError(f"{name}: levels must be >= 1, got {value}")
            layers[name].levels = int(value)

    @property
    def thresholds(self) -> dict[str, float]:
        return {name: float(m.threshold) for name, m in self.qcfs_layers.items()}

    def set_thresholds(self, thresholds: dict[str, float]) -> None:
        layers = self.qcfs_layers
        with torch.no_grad():
            for name, value in thresholds.items():
                layers[name].threshold.fill_(float(value))

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [m.threshold for m in self.qcfs_layers.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        thresholds = {id(p) for p in self.threshold_parameters()}
        return [p for p in self.parameters() if id(p) not in thresholds]

    # ---- back to IR and to a file -------------------------------------------------------------
    def to_graph(self) -> Graph:
        """A copy of the source graph carrying this module's weights, levels and thresholds."""
        graph = self.graph.copy()
        for name, attr, _ in self._steps:
            if attr is not None:
                kind_of(graph[name]).write_back(getattr(self, attr), graph[name])
        return graph

    def example_input(self, batch: int = 1) -> torch.Tensor:
        param = next(self.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        return torch.zeros((batch, *self.graph.input.shape), dtype=dtype, device=device)

    def save_torchscript(self, path) -> None:
        """Write the traced module atomically (temp file, then rename), CPU and float32."""
        clone = GraphModule(self.to_graph())
        # No trace check: it would rerun the module only to compare it with itself.
        save_traced(clone, clone.example_input(), path, check_trace=False)
