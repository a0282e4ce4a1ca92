"""NetX HDF5 export: a converted, quantized MT-SNN as a file stock lava-dl ``netx`` loads.

The file has two parts (docs/netx.md):

* ``/layer/<i>``: the network as stock ``lava.lib.dl.netx.hdf5.Network`` reads it: an ``input``
  layer, then one ``conv`` or ``dense`` layer per population (``flatten`` between a conv and a
  dense). Each projection tree (pooling, flatten, the weighted op, gains) is folded into one
  integer conv kernel or dense matrix, so only layer types netx builds appear. Populations become
  CUBA neurons with ``iDecay=4096`` (the current does not persist: Lava's current decay is du+1 =
  iDecay) and ``vDecay=0`` (no leak): non-leaky IF with netx's reset to zero and strict
  ``v > vThMant``. When every population has T = 1 this is exact (v > th-1 is v >= th on
  integers, v_init folds into the bias, one step makes the reset mode irrelevant); otherwise the
  stock layers are the rate-coded streaming approximation (threshold and bias divided by the
  incoming edge's ``drive``, see ``AlignKind.rate_gain``).
* ``/mtdeploy``: format, version, the IR graph as JSON plus its parameters, and the settings a
  stock run needs (``reset_interval``, ``input_message_bits``, how to read the readout), so
  ``read_netx`` rebuilds the exact MT-SNN (per-layer T, align nodes, thresholds, v_init, scales).
  The stock loader only reads ``/layer``.

The file is validated (netx_schema) before it is written, and written atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtdeploy.errors import DoesNotFitError, InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.snn import incoming_edges, is_alignment, populations, tree_nodes
from mtdeploy.kinds.align import float_gain
from mtdeploy.targets.loihi2.netx_kinds import neuron_group, synapse_fields
from mtdeploy.findings import Finding, errors
from mtdeploy.targets.loihi2.netx_schema import ACT_SHIFT, validate_netx_layers

EXTENSION_FORMAT = "mtdeploy-netx"
EXTENSION_VERSION = 1
# A build's network file: NetX when stock netx can load it, else mtdeploy's own name for the
# same layout with the extension only (so a lab never points netx at a file it cannot run).
NETX_FILE = "network.net"
MTSNN_FILE = "network.mtsnn.h5"
# Block k (1-based) sees input step t at step t + k (each synapse adds one step), so windows of
# `reset_interval` steps line up with the data when netx's per-layer reset offsets start at 1.
RESET_OFFSET = 1


@dataclass
class StockPlan:
    """The stock layers of a graph, what each stands for, and how a stock run reads them."""

    layers: list[dict]
    names: list[str]
    run: dict = field(default_factory=dict)


# ---- projection trees as one synapse layer ----------------------------------------------
def _tree_map(graph: Graph, pop: Node, key: str):
    from mtdeploy.sim.reference import tree_int_forward

    def f(x: torch.Tensor) -> torch.Tensor:
        return tree_int_forward(graph, pop.name, {key: x})
    return f


def _probes(shape, n: int = 3) -> torch.Tensor:
    """Inputs with no zero entry, so a single differing weight always shows in the output."""
    rng = np.random.default_rng(12345)
    x = rng.integers(1, 1024, (n, *shape)) * rng.choice([-1, 1], (n, *shape))
    return torch.as_tensor(x, dtype=torch.float64)


def _dense_matches(weight: np.ndarray, f, in_shape) -> bool:
    x = _probes(in_shape)
    want = f(x).reshape(x.shape[0], -1)
    got = x.reshape(x.shape[0], -1) @ torch.as_tensor(weight, dtype=torch.float64).T
    return want.shape == got.shape and bool(torch.equal(want, got))


def _conv_matches(syn: dict, f, in_shape, out_shape) -> bool:
    x = _probes(in_shape)
    want = f(x)
    got = F.conv2d(x, torch.as_tensor(syn["weight"], dtype=torch.float64), None, syn["stride"],
                   syn["padding"], syn["dilation"], syn["groups"])
    return tuple(got.shape[1:]) == tuple(out_shape) and want.shape == got.shape \
        and bool(torch.equal(want, got))


def _materialise(f, in_shape, n_out: int, chunk: int = 1024) -> np.ndarray:
    """The tree's integer matrix (out, in), column j = its response to input unit j (CHW order)."""
    n_in = int(np.prod(in_shape))
    cols = []
    for start in range(0, n_in, chunk):
        k = min(chunk, n_in - start)
        basis = torch.zeros((k, n_in), dtype=torch.float64)
        basis[torch.arange(k), torch.arange(start, start + k)] = 1.0
        cols.append(f(basis.reshape(k, *in_shape)).reshape(k, n_out))
    return np.rint(torch.cat(cols).T.numpy()).astype(np.int64)


def _composed_conv(body: list[Node], key: str, f, in_shape, out_shape) -> dict | None:
    """A chain of sliding-window ops (sum pools, convs) as one conv, probed from its response.

    Receptive field per axis: K = e_0 + sum_j (e_j - 1) * prod_{i<j} s_i, stride prod s_i,
    padding p_0 + sum_j p_j * prod_{i<j} s_i (e = dilated kernel extent). The kernel is read at
    an output whose field lies inside the input; the caller verifies the whole map, borders
    included (intermediate zero padding is where a composition can differ).
    """
    prev = key
    geo = []
    for node in body:
        a = node.attrs
        if node.inputs != [prev] or not {"kernel", "stride", "padding"} <= set(a):
            return None
        d = a.get("dilation", [1, 1])
        geo.append([(d[ax] * (a["kernel"][ax] - 1) + 1, a["stride"][ax], a["padding"][ax])
                    for ax in (0, 1)])
        prev = node.name
    kernel, stride, padding = [], [], []
    for ax in (0, 1):
        k, s, p = geo[0][ax]
        for e_j, s_j, p_j in (g[ax] for g in geo[1:]):
            k += (e_j - 1) * s
            p += p_j * s
            s *= s_j
        kernel.append(k)
        stride.append(s)
        padding.append(p)
    centre = []
    for ax in (0, 1):
        size, n_out = in_shape[1 + ax], out_shape[1 + ax]
        fits = [o for o in range(n_out)
                if o * stride[ax] - padding[ax] >= 0 and o * stride[ax] - padding[ax] + kernel[ax] <= size]
        if not fits:
            return None
        centre.append(fits[0])
    c_in = in_shape[0]
    ky, kx = kernel
    y0, x0 = (centre[ax] * stride[ax] - padding[ax] for ax in (0, 1))
    n = c_in * ky * kx
    weight = np.zeros((out_shape[0], c_in, ky, kx), np.int64)
    for start in range(0, n, 1024):
        idx = np.arange(start, min(n, start + 1024))
        c, r, q = np.unravel_index(idx, (c_in, ky, kx))
        basis = torch.zeros((len(idx), *in_shape), dtype=torch.float64)
        basis[torch.arange(len(idx)), torch.as_tensor(c), torch.as_tensor(y0 + r),
              torch.as_tensor(x0 + q)] = 1.0
        resp = f(basis)[:, :, centre[0], centre[1]]            # (probes, C_out)
        weight[:, c, r, q] = np.rint(resp.numpy().T).astype(np.int64)
    return {"type": "conv", "weight": weight, "stride": stride, "padding": padding,
            "dilation": [1, 1], "groups": 1}


def _synapse(graph: Graph, pop: Node, key: str, spatial: bool) -> dict:
    """The tree into ``pop`` as a NetX conv (when its input and output are maps and it is one)
    or a dense matrix; every candidate is checked against the tree's own integer map."""
    in_shape = tuple(graph[key].shape)
    f = _tree_map(graph, pop, key)
    body = [n for n in tree_nodes(graph, pop) if not is_alignment(n)]
    if len(body) == 1:
        syn = synapse_fields(body[0])
        if syn and syn["type"] == "conv" and spatial and _conv_matches(syn, f, in_shape, pop.shape):
            return syn
        if syn and syn["type"] == "dense" and _dense_matches(syn["weight"], f, in_shape):
            return syn
    if spatial and len(pop.shape) == 3 and len(in_shape) == 3 and body:
        syn = _composed_conv(body, key, f, in_shape, pop.shape)
        if syn is not None and _conv_matches(syn, f, in_shape, pop.shape):
            return syn
    return {"type": "dense", "weight": _materialise(f, in_shape, pop.size)}


def _bias_layout(bias: np.ndarray, syn_type: str, shape) -> np.ndarray:
    """netx's bias forms: per channel (C,) or per neuron in (x, y, z) order for a conv;
    a vector for a dense layer."""
    bias = np.broadcast_to(np.asarray(bias, np.int64), shape)
    if syn_type == "conv":
        per_channel = bias.reshape(shape[0], -1)
        if np.all(per_channel == per_channel[:, :1]):
            return per_channel[:, 0].copy()
        return np.ascontiguousarray(bias.transpose(2, 1, 0))
    return bias.reshape(-1).copy()


# ---- the plan ------------------------------------------------------------------------------
def plan_netx(graph: Graph) -> StockPlan:
    """The stock layers for a converted, quantized graph; DoesNotFitError if it has no stock form.

    Structure stock NetX cannot express (it is a chain: each layer reads only the layer before)
    is collected as findings, each naming its node, and raised together.
    """
    if not (graph.meta.get("converted") and graph.meta.get("quantized")):
        raise InputError("NetX export needs a converted and quantized graph "
                         "(mtdeploy.passes.convert, then mtdeploy.passes.quantize)")
    pops = populations(graph)
    inp = graph.input
    if not pops or pops[0].name != inp.name or len(pops) < 2:
        raise InputError("NetX export needs an input and at least one population after it")
    steps = max(int(p.T) for p in pops[1:])
    layers: list[dict] = [{"type": "input", "shape": np.asarray(inp.shape, np.int64)}]
    names = [inp.label()]
    findings: list[Finding] = []
    per_layer, not_exact = [], []
    spatial = len(inp.shape) == 3
    first_block_type = None
    prev = inp
    for pop in pops[1:]:
        edges = incoming_edges(graph, pop)
        producers = sorted({e.producer for e in edges})
        if len(edges) != 1 or producers != [prev.name]:
            findings.append(Finding(
                "structure", pop.label(), f"reads from {producers} (expected only {prev.name!r}): stock NetX is "
                "a chain in which each layer reads the layer before it; residual adds, "
                "concatenations and skip connections are not expressible"))
            prev = pop
            continue
        edge = edges[0]
        align = graph[edge.align] if edge.align else None
        drive = 1.0 / float_gain(align.attrs) if align is not None else 1.0
        try:
            neuron, bias, exact = neuron_group(pop, drive, steps)
        except InputError as exc:
            findings.append(Finding("structure", pop.label(), str(exc)))
            prev = pop
            continue
        syn = _synapse(graph, pop, edge.align or edge.producer, spatial)
        if syn["type"] == "dense" and spatial:
            size = int(np.prod(graph[edge.align or edge.producer].shape))
            layers.append({"type": "flatten", "shape": np.asarray([size, 1, 1], np.int64)})
            names.append(f"flatten before {pop.name}")
        shape = pop.shape if syn["type"] == "conv" else (pop.size,)
        layer = {k: (np.asarray(v, np.int64) if k != "type" else v) for k, v in syn.items()}
        layer.update({"shape": np.asarray(shape, np.int64), "neuron": neuron,
                      "bias": _bias_layout(bias, syn["type"], pop.shape)})
        layers.append(layer)
        names.append(pop.label())
        first_block_type = first_block_type or syn["type"]
        per_layer.append({"layer": len(layers) - 1, "node": pop.name, "kind": pop.kind,
                          "T": int(pop.T), "drive": drive, "exact": bool(exact)})
        if not exact:
            not_exact.append(pop.name)
        spatial = syn["type"] == "conv"
        prev = pop
    if prev.name != graph.output:
        findings.append(Finding("structure", graph[graph.output].label(),
                                "the readout is not the last population of the chain"))
    if findings:
        raise DoesNotFitError(_message("the network has no stock NetX form", findings), findings)
    readout = graph[graph.output]
    run = {
        "exact": not not_exact,
        "approximate_populations": not_exact,
        "reset_interval": steps,
        "reset_offset": RESET_OFFSET,
        "input_message_bits": int(graph.meta.get("input_bits", 8)),
        "input_exp": int(graph.meta.get("input_exp", 0)),
        "input_shape": [int(s) for s in inp.shape],
        "input_layout": "xyz" if first_block_type == "conv" else "flat-chw",
        "blocks": len(per_layer),
        # logits ~= v / 2^act_shift * drive / reset_interval * unit, v at the end of the
        # readout's window (readout_logits); exactly equal when "exact"
        "readout": {"layer": len(layers) - 1, "node": readout.name,
                    "drive": per_layer[-1]["drive"], "unit": 2.0 ** -int(readout.attrs.get("exp", 0))},
        "act_shift": ACT_SHIFT,
        "layers": per_layer,
    }
    return StockPlan(layers, names, run)


def _message(head: str, findings: list[Finding]) -> str:
    return "\n".join([f"{head}: {len(findings)} finding(s)"] + [f"  - {f}" for f in findings])


def _checked_plan(graph: Graph) -> tuple[StockPlan | None, list[Finding], list[Finding]]:
    """(plan or None, every finding, the blocking ones): planning and validation, once."""
    try:
        plan = plan_netx(graph)
    except DoesNotFitError as exc:
        return None, list(exc.findings), list(exc.findings)
    findings = validate_netx_layers(plan.layers, plan.names, plan.run["input_message_bits"])
    return plan, findings, errors(findings)


def netx_findings(graph: Graph) -> list[Finding]:
    """Everything that would stop ``write_netx`` (and its warnings), without writing."""
    return _checked_plan(graph)[1]


# ---- writing -------------------------------------------------------------------------------
def _put(group, key: str, value) -> None:
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


def _text(group, key: str, obj) -> None:
    import h5py

    group.create_dataset(key, data=json.dumps(obj, default=_json_default),
                         dtype=h5py.string_dtype("utf-8"))


def build_network_file(graph: Graph) -> str:
    """The file name a build gives ``graph``: ``network.net`` when stock netx loads it,
    ``network.mtsnn.h5`` (same layout, extension only) when it has no stock form."""
    return MTSNN_FILE if _checked_plan(graph)[2] else NETX_FILE


def write_build_network(graph: Graph, directory) -> tuple[str, list[Finding]]:
    """Write a build's network file into ``directory`` under :func:`build_network_file`'s
    name (planning once); -> (file name, findings as :func:`write_netx` returns them)."""
    checked = _checked_plan(graph)
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
    return _write(graph, Path(path), _checked_plan(graph), require_stock)


def _write(graph: Graph, path: Path, checked, require_stock: bool) -> list[Finding]:
    import h5py

    plan, findings, blocking = checked
    if blocking and (require_stock or path.suffix.lower() == ".net"):
        head = "the NetX file would not load as intended"
        if not require_stock:
            head += (f" (write this network to a non-.net name such as {MTSNN_FILE}: stock "
                     "netx cannot load it)")
        raise DoesNotFitError(_message(head, blocking), blocking)
    if blocking:
        stock = {"loadable": False, "findings": [str(f) for f in blocking]}
        layers: list[dict] = []
    else:
        stock = {**plan.run, "loadable": True, "warnings": [str(w) for w in findings]}
        layers = plan.layers
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            group = f.create_group("layer")
            for i, layer in enumerate(layers):
                _put(group, str(i), layer)
            ext = f.create_group("mtdeploy")
            _put(ext, "format", EXTENSION_FORMAT)
            ext.create_dataset("version", data=EXTENSION_VERSION)
            _text(ext, "graph", graph.to_json())
            _text(ext, "stock", stock)
            params = ext.create_group("params")
            for i, node in enumerate(graph):
                if node.params:
                    sub = params.create_group(str(i))
                    for name, arr in node.params.items():
                        sub.create_dataset(name, data=np.asarray(arr))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return findings


def readout_logits(v_lava: np.ndarray, run: dict, reset_interval: int | None = None) -> np.ndarray:
    """A stock run's readout voltage (Lava units, end of window) in the ANN's logit units.

    ``run`` is the file's stock record (netx_import.stock_run_settings); ``reset_interval``
    the window the run used (default: the recommended one). The readout accumulated
    ``reset_interval`` steps of ``1/drive`` of mtdeploy's per-step current.
    """
    r = run["readout"]
    steps = reset_interval or run["reset_interval"]
    return np.asarray(v_lava, np.float64) / 2.0 ** run["act_shift"] * r["drive"] / steps * r["unit"]


__all__ = ["write_netx", "plan_netx", "netx_findings", "readout_logits", "StockPlan",
           "EXTENSION_FORMAT", "EXTENSION_VERSION"]
