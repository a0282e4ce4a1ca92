"""The IR: a typed dataflow graph of layer nodes, kept in topological order.

Every node carries its output shape (one sample, no batch axis, PyTorch CHW order), its kind's
attributes and parameters (numpy arrays), where it came from in the user's model, and its
timing once the conversion passes have run (``T``: the node's time steps). Behaviour per kind
lives in :mod:`mtdeploy.ir.kinds`; this module is only structure and the file format.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mtdeploy.errors import InputError

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
        inputs = [n for n in self.nodes.values() if n.kind == "input"]
        if len(inputs) != 1:
            raise InputError(f"the graph must have exactly one input, found {len(inputs)}")
        return inputs[0]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if name in n.inputs]

    def of_kind(self, *kinds: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind in kinds]

    def infer_shapes(self) -> None:
        from mtdeploy.ir.kinds import kind_of

        for node in self.nodes.values():
            node.shape = tuple(int(s) for s in kind_of(node).infer_shape(
                node, [self.nodes[i].shape for i in node.inputs]))

    def validate(self) -> None:
        seen: set[str] = set()
        from mtdeploy.ir.kinds import KINDS

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
        g = Graph(self.name)
        for n in self.nodes.values():
            g.nodes[n.name] = Node(n.name, n.kind, list(n.inputs), json.loads(json.dumps(n.attrs)),
                                   {k: v.copy() for k, v in n.params.items()}, tuple(n.shape),
                                   n.origin, n.T)
        g.output = self.output
        g.meta = json.loads(json.dumps(self.meta))
        return g

    def summary(self) -> str:
        rows = [f"{'node':<24} {'kind':<10} {'shape':<16} {'T':>3}  inputs"]
        for n in self.nodes.values():
            extra = f" levels={n.attrs['levels']}" if "levels" in n.attrs else ""
            rows.append(f"{n.name:<24} {n.kind:<10} {str(n.shape):<16} {n.T if n.T else '-':>3}  "
                        f"{', '.join(n.inputs)}{extra}")
        return "\n".join(rows)

    # ---- file format (docs/ir-format.md) --------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": IR_FORMAT, "version": IR_VERSION, "name": self.name, "output": self.output,
            "meta": self.meta,
            "nodes": [{"name": n.name, "kind": n.kind, "inputs": n.inputs, "attrs": n.attrs,
                       "shape": list(n.shape), "origin": n.origin, "T": n.T,
                       "params": sorted(n.params)} for n in self.nodes.values()],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph atomically as a zip: ``graph.json`` plus one ``.npy`` per parameter."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("graph.json", json.dumps(self.to_json(), indent=1))
                for n in self.nodes.values():
                    for pname, arr in n.params.items():
                        buf = io.BytesIO()
                        np.save(buf, np.asarray(arr), allow_pickle=False)
                        zf.writestr(f"params/{n.name}/{pname}.npy", buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Graph":
        try:
            with zipfile.ZipFile(path) as zf:
                doc = json.loads(zf.read("graph.json"))
                if doc.get("format") != IR_FORMAT:
                    raise InputError(f"{path}: not an mtdeploy IR file")
                if doc.get("version", 0) > IR_VERSION:
                    raise InputError(f"{path}: IR version {doc['version']} is newer than this "
                                     f"mtdeploy reads ({IR_VERSION})")
                g = cls(doc["name"])
                for nd in doc["nodes"]:
                    params = {p: np.load(io.BytesIO(zf.read(f"params/{nd['name']}/{p}.npy")),
                                         allow_pickle=False) for p in nd["params"]}
                    g.add(Node(nd["name"], nd["kind"], nd["inputs"], nd["attrs"], params,
                               tuple(nd["shape"]), nd.get("origin", ""), nd.get("T")))
                g.output = doc["output"]
                g.meta = doc.get("meta", {})
        except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: corrupt or unreadable IR file ({exc})") from None
        g.validate()
        return g
