"""The one IR serialiser: a graph's JSON document plus its parameter arrays, and back.

Two containers use it: ``.mtir`` zip files (:func:`write_zip` / :func:`read_zip`, made atomic
by :func:`mtdeploy.io.save_graph`) and the ``/mtdeploy`` extension of NetX files, which stores
the same document beside per-node HDF5 groups. Both read back through :func:`graph_from_json`,
so a format change happens here once.
"""
from __future__ import annotations

import io
import json
import tokenize
import zipfile
import zlib
from typing import BinaryIO, Callable, Mapping

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import IR_FORMAT, IR_VERSION, Graph, Node

# What reading damaged zip or .npy bytes raises: a bad zip, bad deflate data, an unknown
# compression, a short member, and the errors of numpy's .npy header parser (it tokenizes and
# evaluates the header's Python literal).
DAMAGED_FILE_ERRORS = (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError,
                       KeyError, ValueError, TypeError, SyntaxError, tokenize.TokenError,
                       RecursionError, RuntimeError)   # (RuntimeError: an "encrypted" member)


def graph_from_json(doc: Mapping, params_of: Callable[[int, dict], dict[str, np.ndarray]],
                    where: str) -> Graph:
    """A validated graph from ``Graph.to_json()``'s document; ``params_of(i, node_doc)`` gives
    node i's arrays. ``where`` names the source in errors."""
    if not isinstance(doc, Mapping) or doc.get("format") != IR_FORMAT:
        raise InputError(f"{where}: not an mtdeploy IR document")
    version = doc.get("version", 0)
    if not isinstance(version, int) or version > IR_VERSION:
        raise InputError(f"{where}: IR version {version!r} is newer than this mtdeploy reads "
                         f"({IR_VERSION}); upgrade mtdeploy")
    try:
        g = Graph(doc["name"])
        for i, nd in enumerate(doc["nodes"]):
            g.add(Node(nd["name"], nd["kind"], list(nd["inputs"]), nd["attrs"], params_of(i, nd),
                       tuple(nd["shape"]), nd.get("origin", ""), nd.get("T")))
        g.output = doc["output"]
        g.meta = doc.get("meta", {})
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: the IR document is incomplete or corrupt "
                         f"({type(exc).__name__}: {exc})") from None
    g.validate()
    return g


def write_zip(graph: Graph, fh: BinaryIO) -> None:
    """``graph.json`` plus one ``params/<node>/<name>.npy`` per parameter."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("graph.json", json.dumps(graph.to_json(), indent=1))
        for n in graph:
            for pname, arr in n.params.items():
                buf = io.BytesIO()
                np.save(buf, np.asarray(arr), allow_pickle=False)
                zf.writestr(f"params/{n.name}/{pname}.npy", buf.getvalue())


def read_zip(source, where: str) -> Graph:
    try:
        with zipfile.ZipFile(source) as zf:
            doc = json.loads(zf.read("graph.json"))

            def params_of(i: int, nd: dict) -> dict[str, np.ndarray]:
                return {p: np.load(io.BytesIO(zf.read(f"params/{nd['name']}/{p}.npy")),
                                   allow_pickle=False) for p in nd["params"]}

            return graph_from_json(doc, params_of, where)
    except (*DAMAGED_FILE_ERRORS, MemoryError) as exc:
        raise InputError(f"{where}: corrupt or unreadable IR file ({exc})") from None
