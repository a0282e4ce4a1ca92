"""NetX HDF5 files: a converted, quantized MT-SNN as a file stock lava-dl ``netx`` loads.

The file has two parts (docs/netx.md):

* ``/layer/<i>``: the stock layers (plan.py), which stock ``lava.lib.dl.netx.hdf5.Network`` runs.
* ``/mtdeploy``: format, version, the IR graph as JSON plus its parameters, and the settings a
  stock run needs (``reset_interval``, ``input_message_bits``, how to read the readout), so
  ``mtdeploy.frontends.netx.read_netx`` rebuilds the exact MT-SNN (per-layer T, align nodes,
  thresholds, v_init, scales). The stock loader only reads ``/layer``.

The layers are validated (schema.py) before anything is written, and the file is written
atomically, so a lab never finds a half-written or unloadable ``.net``.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from mtdeploy.errors import DoesNotFitError
from mtdeploy.findings import Finding
from mtdeploy.io import atomic_path
from mtdeploy.ir.graph import Graph
from mtdeploy.targets.loihi2.netx.plan import checked_plan, findings_message

EXTENSION_FORMAT = "mtdeploy-netx"
EXTENSION_VERSION = 2     # 2: /mtdeploy/digest, checked on read
# A build's network file: NetX when stock netx can load it, else mtdeploy's own name for the
# same layout with the extension only (so a lab never points netx at a file it cannot run).
NETX_FILE = "network.net"
MTSNN_FILE = "network.mtsnn.h5"


def build_network_file(graph: Graph) -> str:
    """The file name a build gives ``graph``: ``network.net`` when stock netx loads it,
    ``network.mtsnn.h5`` (same layout, extension only) when it has no stock form."""
    return MTSNN_FILE if checked_plan(graph)[2] else NETX_FILE


def write_build_network(graph: Graph, directory) -> tuple[str, list[Finding]]:
    """Write a build's network file into ``directory`` under :func:`build_network_file`'s
    name (planning once); -> (file name, findings as :func:`write_netx` returns them)."""
    checked = checked_plan(graph)
    name = MTSNN_FILE if checked[2] else NETX_FILE
    return name, _write(graph, Path(directory) / name, checked, require_stock=not checked[2])


def write_netx(graph: Graph, path, require_stock: bool = True) -> list[Finding]:
    """Write ``graph`` as a NetX file stock lava-dl loads, with the MT-SNN in ``/mtdeploy``.

    Validates first: raises DoesNotFitError (every finding, each naming its layer) and writes
    nothing when stock netx would fail or change a value. With ``require_stock=False`` such a
    network (a residual add, TPP neurons, values outside netx's ranges) is written with an
    empty ``/layer`` group instead: the ``/mtdeploy`` extension still holds the full MT-SNN,
    which mtdeploy's own Lava processes run, and ``/mtdeploy/stock`` records why stock netx
    cannot. Such a file is not a NetX file, so it may not be named ``*.net`` (builds call it
    ``network.mtsnn.h5``): every ``.net`` mtdeploy writes loads in stock netx. Returns the
    warnings (and, then, those findings). The file appears whole or not at all.
    """
    return _write(graph, Path(path), checked_plan(graph), require_stock)


def _write(graph: Graph, path: Path, checked, require_stock: bool) -> list[Finding]:
    plan, findings, blocking = checked
    if blocking and (require_stock or path.suffix.lower() == ".net"):
        head = "the NetX file would not load as intended"
        if not require_stock:
            head += (f" (write this network to a non-.net name such as {MTSNN_FILE}: stock "
                     "netx cannot load it)")
        raise DoesNotFitError(findings_message(head, blocking), blocking)
    if blocking:
        stock = {"loadable": False, "findings": [str(f) for f in blocking]}
        layers: list[dict] = []
    else:
        stock = {**plan.run, "loadable": True, "warnings": [str(w) for w in findings]}
        layers = plan.layers
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        group = f.create_group("layer")
        for i, layer in enumerate(layers):
            _put(group, str(i), layer)
        _put_extension(f.create_group("mtdeploy"), graph, stock)
    return findings


def _put_extension(ext, graph: Graph, stock: dict) -> None:
    """``/mtdeploy``: the IR graph as JSON (``Graph.to_json``), its parameters by node index
    (``graph_from_json`` reads them back), the stock run record, and the digest of all three
    (:func:`extension_digest`)."""
    _put(ext, "format", EXTENSION_FORMAT)
    ext.create_dataset("version", data=EXTENSION_VERSION)
    texts = {key: json.dumps(doc, default=_json_default)
             for key, doc in (("graph", graph.to_json()), ("stock", stock))}
    for key, text in texts.items():
        ext.create_dataset(key, data=text, dtype=h5py.string_dtype("utf-8"))
    arrays = {str(i): {name: np.asarray(arr) for name, arr in node.params.items()}
              for i, node in enumerate(graph) if node.params}
    # hashed while the arrays are written (hashlib releases the GIL: a VGG-16-224's 1.2 GB
    # take about a second each way)
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(extension_digest, texts["graph"], texts["stock"], arrays)
        params = ext.create_group("params")
        for i, named in arrays.items():
            sub = params.create_group(i)
            for name, arr in named.items():
                sub.create_dataset(name, data=arr)
        _put(ext, "digest", digest.result())


def extension_digest(graph_text: str, stock_text: str, params: dict) -> str:
    """``sha256:<hex>`` of the extension's graph and stock JSON texts and of every parameter
    (node index, name, dtype, shape and bytes, in sorted order).

    The reader checks the stock layers against the graph, but most of the graph (thresholds,
    readout exponent, T, windows, weights of populations without a stock form) has no stock
    counterpart: an edit there would run silently as a different network. The digest makes
    any such edit, or damage, an error on read.
    """
    h = hashlib.sha256()
    for text in (graph_text, stock_text):
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    for index in sorted(params, key=lambda k: (len(k), k)):
        for name in sorted(params[index]):
            arr = np.asarray(params[index][name])
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            h.update(f"{index}/{name}/{arr.dtype.str}/{arr.shape}".encode("utf-8") + b"\0")
            h.update(arr.reshape(-1).view(np.uint8))   # its bytes, without a copy of them
    return "sha256:" + h.hexdigest()


def _put(group, key: str, value) -> None:
    """A layer dict as HDF5: dicts as groups, strings as netx reads them, the rest as arrays."""
    if isinstance(value, dict):
        sub = group.create_group(key)
        for k, v in value.items():
            _put(sub, k, v)
    elif isinstance(value, str):
        # (1,) fixed-length ASCII, as slayer writes 'type' (netx decodes value[0])
        group.create_dataset(key, data=np.array([value.encode("ascii")],
                                                dtype=f"S{max(10, len(value))}"))
    else:
        group.create_dataset(key, data=np.asarray(value))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


