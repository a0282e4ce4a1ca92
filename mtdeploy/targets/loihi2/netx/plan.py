"""The stock NetX layers of a converted, quantized graph, and how a stock run reads them.

The network as stock ``lava.lib.dl.netx.hdf5.Network`` reads it: an ``input`` layer, then one
``conv`` or ``dense`` layer per population (``flatten`` between a conv and a dense). Each
projection tree (pooling, flatten, the weighted op, gains) is folded into one integer conv kernel
or dense matrix, so only layer types netx builds appear. Populations become CUBA neurons
(neurons.py): exact when every population has T = 1, otherwise the rate-coded streaming
approximation (threshold and bias divided by the incoming edge's ``drive``, see
``AlignKind.rate_gain``). The plan's ``run`` record (``/mtdeploy/stock`` in the file) says how a
stock run presents the input and reads the readout; docs/netx.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mtdeploy.errors import DoesNotFitError, InputError
from mtdeploy.findings import Finding, errors
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.snn import incoming_edges, is_alignment, populations, tree_nodes
from mtdeploy.kinds.align import float_gain
from mtdeploy.sim.reference import tree_int_forward
from mtdeploy.targets.loihi2.netx.kinds import neuron_group, synapse_fields
from mtdeploy.targets.loihi2.netx.schema import ACT_SHIFT, validate_netx_layers

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
    """The tree into ``pop`` as a function of the edge ``key``'s integers (bias left out)."""
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
    pops = _chain_populations(graph)
    inp = pops[0]
    steps = max(int(p.T) for p in pops[1:])
    plan = StockPlan([{"type": "input", "shape": np.asarray(inp.shape, np.int64)}], [inp.label()])
    findings: list[Finding] = []
    blocks: list[dict] = []
    spatial = len(inp.shape) == 3
    prev = inp
    for pop in pops[1:]:
        block = _plan_block(graph, pop, prev, steps, spatial, plan)
        if isinstance(block, Finding):
            findings.append(block)
        else:
            blocks.append(block)
            spatial = plan.layers[-1]["type"] == "conv"
        prev = pop
    if prev.name != graph.output:
        findings.append(Finding("structure", graph[graph.output].label(),
                                "the readout is not the last population of the chain"))
    if findings:
        raise DoesNotFitError(findings_message("the network has no stock NetX form", findings),
                              findings)
    plan.run = _run_record(graph, plan, blocks, steps)
    return plan


def _chain_populations(graph: Graph) -> list[Node]:
    """The populations, input first; InputError where the graph cannot be planned at all."""
    if not (graph.meta.get("converted") and graph.meta.get("quantized")):
        raise InputError("NetX export needs a converted and quantized graph "
                         "(mtdeploy.passes.convert, then mtdeploy.passes.quantize)")
    pops = populations(graph)
    if not pops or pops[0].name != graph.input.name or len(pops) < 2:
        raise InputError("NetX export needs an input and at least one population after it")
    return pops


def _plan_block(graph: Graph, pop: Node, prev: Node, steps: int, spatial: bool,
                plan: StockPlan) -> dict | Finding:
    """Append the layers standing for ``pop`` to ``plan`` (a flatten first where a dense layer
    reads a map); -> its record in the run, or the finding why it has no stock form."""
    edges = incoming_edges(graph, pop)
    producers = sorted({e.producer for e in edges})
    if len(edges) != 1 or producers != [prev.name]:
        return Finding("structure", pop.label(), f"reads from {producers} (expected only "
                       f"{prev.name!r}): stock NetX is a chain in which each layer reads the "
                       "layer before it; residual adds, concatenations and skip connections "
                       "are not expressible")
    edge = edges[0]
    drive = 1.0 / float_gain(graph[edge.align].attrs) if edge.align else 1.0
    try:
        neuron, bias, exact = neuron_group(pop, drive, steps)
    except InputError as exc:
        return Finding("structure", pop.label(), str(exc))
    key = edge.align or edge.producer
    syn = _synapse(graph, pop, key, spatial)
    if syn["type"] == "dense" and spatial:
        size = int(np.prod(graph[key].shape))
        plan.layers.append({"type": "flatten", "shape": np.asarray([size, 1, 1], np.int64)})
        plan.names.append(f"flatten before {pop.name}")
    shape = pop.shape if syn["type"] == "conv" else (pop.size,)
    layer = {k: (np.asarray(v, np.int64) if k != "type" else v) for k, v in syn.items()}
    layer.update({"shape": np.asarray(shape, np.int64), "neuron": neuron,
                  "bias": _bias_layout(bias, syn["type"], pop.shape)})
    plan.layers.append(layer)
    plan.names.append(pop.label())
    return {"layer": len(plan.layers) - 1, "node": pop.name, "kind": pop.kind,
            "T": int(pop.T), "drive": drive, "exact": bool(exact)}


def _run_record(graph: Graph, plan: StockPlan, blocks: list[dict], steps: int) -> dict:
    """How a stock run presents the input and reads the readout (``/mtdeploy/stock``)."""
    not_exact = [b["node"] for b in blocks if not b["exact"]]
    readout = graph[graph.output]
    first_block_type = plan.layers[blocks[0]["layer"]]["type"]
    return {
        "exact": not not_exact,
        "approximate_populations": not_exact,
        "reset_interval": steps,
        "reset_offset": RESET_OFFSET,
        "input_message_bits": int(graph.meta.get("input_bits", 8)),
        "input_exp": int(graph.meta.get("input_exp", 0)),
        "input_shape": [int(s) for s in graph.input.shape],
        "input_layout": "xyz" if first_block_type == "conv" else "flat-chw",
        "blocks": len(blocks),
        # logits ~= v / 2^act_shift * drive / reset_interval * unit, v at the end of the
        # readout's window (readout_logits); exactly equal when "exact"
        "readout": {"layer": len(plan.layers) - 1, "node": readout.name,
                    "drive": blocks[-1]["drive"], "unit": 2.0 ** -int(readout.attrs.get("exp", 0))},
        "act_shift": ACT_SHIFT,
        "layers": blocks,
    }


def findings_message(head: str, findings: list[Finding]) -> str:
    """One error message listing every finding, so a user fixes them all in one go."""
    return "\n".join([f"{head}: {len(findings)} finding(s)"] + [f"  - {f}" for f in findings])


def checked_plan(graph: Graph) -> tuple[StockPlan | None, list[Finding], list[Finding]]:
    """(plan or None, every finding, the blocking ones): planning and validation, once."""
    try:
        plan = plan_netx(graph)
    except DoesNotFitError as exc:
        return None, list(exc.findings), list(exc.findings)
    findings = validate_netx_layers(plan.layers, plan.names, plan.run["input_message_bits"])
    return plan, findings, errors(findings)


def netx_findings(graph: Graph) -> list[Finding]:
    """Everything that would stop ``write_netx`` (and its warnings), without writing."""
    return checked_plan(graph)[1]


def readout_logits(v_lava: np.ndarray, run: dict, reset_interval: int | None = None) -> np.ndarray:
    """A stock run's readout voltage (Lava units, end of window) in the ANN's logit units.

    ``run`` is the file's stock record (mtdeploy.frontends.netx.stock_run_settings);
    ``reset_interval`` the window the run used (default: the recommended one). The readout
    accumulated ``reset_interval`` steps of ``1/drive`` of mtdeploy's per-step current.
    """
    r = run["readout"]
    steps = reset_interval or run["reset_interval"]
    return np.asarray(v_lava, np.float64) / 2.0 ** run["act_shift"] * r["drive"] / steps * r["unit"]
