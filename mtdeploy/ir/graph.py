"""The IR: a typed dataflow graph of layer nodes, kept in topological order.

Every node carries its output shape (one sample, no batch axis, PyTorch CHW order), its kind's
attributes and parameters (numpy arrays), where it came from in the user's model, and its
timing once the conversion passes have run (``T``: the node's time steps). Behaviour per kind
lives in :mod:`mtdeploy.kinds` (the interface: :mod:`mtdeploy.ir.kind`); this module is only structure and the file format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.kind import KINDS, kind_of

IR_FORMAT = "mtdeploy-ir"
IR_VERSION = 1


@dataclass
class Node:
    name: str
    kind: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    origin: str = ""          # module path / op in the user's model, for messages
    T: int | None = None      # time steps of this node's output (set by passes)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 0

    def label(self) -> str:
        """How findings and errors name this node."""
        return f"{self.name} ({self.kind}{', ' + self.origin if self.origin and self.origin != self.name else ''})"


class Graph:
    """Nodes in topological order; one input node, one output node."""

    def __init__(self, name: str = "model"):
        self.name = name
        self.nodes: dict[str, Node] = {}
        self.output: str | None = None
        self.meta: dict[str, Any] = {}

    # ---- construction -------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name!r}")
        missing = [i for i in node.inputs if i not in self.nodes]
        if missing:
            raise ValueError(f"node {node.name!r} uses undefined inputs {missing}")
        self.nodes[node.name] = node
        return node

    def unique_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.nodes:
            k += 1
            name = f"{base}_{k}"
        return name

    def insert_between(self, producer: str, consumer: str, node: Node) -> Node:
        """Insert ``node`` (whose only input is ``producer``) on the edge producer -> consumer."""
        assert node.inputs == [producer]
        order = list(self.nodes)
        cons = self.nodes[consumer]
        cons.inputs = [node.name if i == producer else i for i in cons.inputs]
        pos = order.index(producer) + 1
        order.insert(pos, node.name)
        self.nodes[node.name] = node
        self.nodes = {n: self.nodes[n] for n in order}
        return node

    def insert_after(self, anchor: str, node: Node) -> Node:
        """Add ``node`` right after ``anchor`` in the order (its inputs must come before)."""
        order = list(self.nodes)
        order.insert(order.index(anchor) + 1, node.name)
        self.nodes[node.name] = node
        self.nodes = {n: self.nodes[n] for n in order}
        return node

    def remove(self, name: str) -> None:
        """Remove a single-input node, rewiring its consumers to its input."""
        node = self.nodes[name]
        if len(node.inputs) != 1:
            raise ValueError(f"can only bypass single-input nodes, {name} has {len(node.inputs)}")
        src = node.inputs[0]
        for other in self.nodes.values():
            other.inputs = [src if i == name else i for i in other.inputs]
        if self.output == name:
            self.output = src
        del self.nodes[name]

    # ---- queries --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def input(self) -> Node:
        inputs = [n for n in self.nodes.values() if kind_of(n).role == "source"]
        if len(inputs) != 1:
            raise InputError(f"the graph must have exactly one input, found {len(inputs)}")
        return inputs[0]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if name in n.inputs]

    def of_kind(self, *kinds: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind in kinds]

    def infer_shapes(self) -> None:
        for node in self.nodes.values():
            node.shape = tuple(int(s) for s in kind_of(node).infer_shape(
                node, [self.nodes[i].shape for i in node.inputs]))

    def validate(self) -> None:
        seen: set[str] = set()
        for node in self.nodes.values():
            if node.kind not in KINDS:
                raise InputError(f"node {node.name}: unknown kind {node.kind!r}")
            for i in node.inputs:
                if i not in seen:
                    raise InputError(f"node {node.name}: input {i} is not defined before it")
            seen.add(node.name)
        if self.output not in self.nodes:
            raise InputError(f"graph output {self.output!r} is not a node")

    def copy(self) -> "Graph":
        """A new graph with its own structure, attrs and meta, sharing the parameter arrays:
        passes replace a parameter (``node.params[k] = ...``) and never write into one, so a
        VGG-16's half a gigabyte of weights exists once however many copies the passes make.
        (Arrays are not frozen: torch warns on every read-only array it wraps.)"""
        g = Graph(self.name)
        for n in self.nodes.values():
            g.nodes[n.name] = Node(n.name, n.kind, list(n.inputs), json.loads(json.dumps(n.attrs)),
                                   dict(n.params), tuple(n.shape),
                                   n.origin, n.T)
        g.output = self.output
        g.meta = json.loads(json.dumps(self.meta))
        return g

    # ---- the JSON document of docs/ir-format.md (mtdeploy.ir.serialize reads it back) ----
    def to_json(self) -> dict:
        """Everything but the parameter arrays, which files store beside it."""
        return {
            "format": IR_FORMAT, "version": IR_VERSION, "name": self.name, "output": self.output,
            "meta": self.meta,
            "nodes": [{"name": n.name, "kind": n.kind, "inputs": n.inputs, "attrs": n.attrs,
                       "shape": list(n.shape), "origin": n.origin, "T": n.T,
                       "params": sorted(n.params)} for n in self.nodes.values()],
        }
