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

from mtdeploy.errors import DoesNotFitError, InputError
from mtdeploy.findings import Finding, errors
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.snn import incoming_edges, is_alignment, is_source, populations, tree_nodes
from mtdeploy.kinds.align import float_gain
from mtdeploy.kinds.neurons import CHANNEL_UNIT
from mtdeploy.passes.quantize import per_layer_copy
from mtdeploy.sim.reference import tree_int_forward
from mtdeploy.targets.loihi2.forms import (ConvForm, composed_conv, conv_matches, matrix_tail,
                                          probed_blocks)
from mtdeploy.targets.loihi2.netx.kinds import neuron_group, synapse_fields
from mtdeploy.targets.loihi2.netx.schema import ACT_SHIFT, bias_range_problem, validate_netx_layers

# Block k (1-based) sees input step t at step t + k (each synapse adds one step), so windows of
# `reset_interval` steps line up with the data when netx's per-layer reset offsets start at 1.
RESET_OFFSET = 1
#: the stock layers' input width: a first layer's integer bias grows with it, and netx holds
#: biases in a 13-bit mantissa (bias_exp 6); a build with wider inputs keeps them in /mtdeploy
STOCK_INPUT_BITS = 8


@dataclass
class StockPlan:
    """The stock layers of a graph, what each stands for, and how a stock run reads them."""

    layers: list[dict]
    names: list[str]
    run: dict = field(default_factory=dict)


# ---- projection trees as one synapse layer ----------------------------------------------
def _synapse(graph: Graph, pop: Node, key: str, spatial: bool) -> dict:
    """The tree into ``pop`` as a NetX conv (when its input and output are maps and it is one)
    or a dense matrix; every candidate is checked against the tree's own integer map (a conv
    on a crop whose borders behave as the map's, see mtdeploy.targets.loihi2.forms)."""
    in_shape = tuple(graph[key].shape)
    body = [n for n in tree_nodes(graph, pop) if not is_alignment(n)]
    syn = synapse_fields(body[0]) if len(body) == 1 else None
    if spatial and len(pop.shape) == 3 and len(in_shape) == 3 and body:
        if syn and syn["type"] == "conv":
            own = ConvForm(syn["weight"], tuple(syn["stride"]), tuple(syn["padding"]),
                           int(syn["groups"]), in_shape, tuple(pop.shape), tuple(syn["dilation"]))
            if conv_matches(graph, pop, key, own):
                return syn
        form = composed_conv(graph, pop, key)
        if form is not None:
            return {"type": "conv", "weight": form.weight, "stride": list(form.stride),
                    "padding": list(form.padding), "dilation": list(form.dilation),
                    "groups": form.groups}
    if syn and syn["type"] == "dense" and _dense_matches(syn["weight"], graph, pop, key):
        return syn

    def tree(x: torch.Tensor) -> torch.Tensor:
        return tree_int_forward(graph, pop.name, {key: x})

    widest = max([pop.size] + [n.size for n in body])
    return {"type": "dense", "weight": _probed_dense(graph, pop, key, tree, widest)}


_WIDER = {np.dtype(np.int8): np.int16, np.dtype(np.int16): np.int32,
          np.dtype(np.int32): np.int64}


def _probed_dense(graph: Graph, pop: Node, key: str, tree, widest: int) -> np.ndarray:
    """The tree's integer matrix (out, in), filled a block at a time into the smallest integer
    type that holds it: a VGG-16-224 classifier with its pool folded in has 411M weights, 0.4
    GB as int8 where a sparse probe then an int64 copy took over 10 GB. Rows come from
    :func:`~..forms.matrix_tail` where the tree ends in a matrix node (no probe through
    its weights), else from probing the tree."""
    in_shape = graph[key].shape
    w = np.zeros((pop.size, int(np.prod(in_shape))), np.int8)
    tail = matrix_tail(graph, pop, key)
    if tail is not None:
        for r0, block in tail.rows():
            block = np.rint(block)
            w = _holding(w, block)
            w[r0:r0 + len(block)] = block
        return w
    for i, j, values in probed_blocks(tree, in_shape, pop.size, widest, 2 ** 24):
        values = np.rint(values)
        w = _holding(w, values)
        w[i, j] = values
    return w


def _holding(w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``w`` widened until its integer type holds ``values``."""
    while values.size and not (np.iinfo(w.dtype).min <= values.min()
                               and values.max() <= np.iinfo(w.dtype).max):
        w = w.astype(_WIDER[w.dtype])
    return w


def _dense_matches(weight: np.ndarray, graph: Graph, pop: Node, key: str) -> bool:
    """``weight`` is the tree's map on random integers with no zero entry."""
    rng = np.random.default_rng(12345)
    shape = (3, *graph[key].shape)
    x = torch.as_tensor(rng.integers(1, 1024, shape) * rng.choice([-1, 1], shape),
                        dtype=torch.float64)
    want = tree_int_forward(graph, pop.name, {key: x}).reshape(3, -1)
    got = x.reshape(3, -1) @ torch.as_tensor(weight, dtype=torch.float64).T
    return want.shape == got.shape and bool(torch.equal(want, got))


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
    is collected as findings, each naming its node, and raised together. Stock netx has one
    ``vThMant`` per layer, so a graph quantized per channel (or with inputs wider than
    :data:`STOCK_INPUT_BITS`) is planned from its per-layer, 8-bit-input quantization (the
    ``/mtdeploy`` extension keeps the network as built), made only once the structure is
    known to have a stock form.
    """
    if any(CHANNEL_UNIT in n.params for n in graph) or \
            graph.meta.get("input_bits", STOCK_INPUT_BITS) > STOCK_INPUT_BITS:
        _chain_plan(graph, layers=False)      # a network without a stock form stops here
    flat = per_layer_copy(graph, max_input_bits=STOCK_INPUT_BITS)
    plan, blocks, steps = _chain_plan(flat, layers=True)
    plan.run = _run_record(flat, plan, blocks, steps)
    # the stock layers always have one unit per layer and inputs of at most 8 bits: with
    # per-channel units or wider inputs in the extension they run another quantization of
    # the network, never exactly the extension's
    if flat is not graph:
        plan.run.update(exact=False, extension_scaling="per-channel" if any(
            CHANNEL_UNIT in n.params for n in graph) else "per-layer",
            extension_input_bits=int(graph.meta["input_bits"]))
    return plan


def _chain_plan(graph: Graph, layers: bool) -> tuple[StockPlan, list[dict], int]:
    """(plan, block records, steps) of the chain; DoesNotFitError with every finding. With
    ``layers`` False only the structure is checked (no synapse layers are made)."""
    pops = _chain_populations(graph)
    inp = pops[0]
    steps = max(int(p.T) for p in pops[1:])
    plan = StockPlan([{"type": "input", "shape": np.asarray(inp.shape, np.int64)}], [inp.label()])
    findings: list[Finding] = []
    blocks: list[dict] = []
    spatial = len(inp.shape) == 3
    prev = inp
    for pop in pops[1:]:
        # once a finding stops the plan, the rest only looks for findings: no synapse layers
        block = _plan_block(graph, pop, prev, steps, spatial, plan,
                            layers=layers and not findings)
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
    return plan, blocks, steps


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
                plan: StockPlan, layers: bool = True) -> dict | Finding:
    """Append the layers standing for ``pop`` to ``plan`` (a flatten first where a dense layer
    reads a map); -> its record in the run, or the finding why it has no stock form (with
    ``layers`` False only that: nothing is appended)."""
    edges = incoming_edges(graph, pop)
    producers = sorted({e.producer for e in edges})
    if len(edges) != 1 or producers != [prev.name]:
        return Finding("structure", pop.label(), f"reads from {producers} (expected only "
                       f"{prev.name!r}): stock NetX is a chain in which each layer reads the "
                       "layer before it; residual adds, concatenations and skip connections "
                       "are not expressible")
    nonlinear = [n.label() for n in tree_nodes(graph, pop) if not kind_of(n).linear_map]
    if nonlinear:
        return Finding("structure", pop.label(), f"its synapses pass through max pooling "
                       f"({', '.join(nonlinear)}), which is not a linear map: stock NetX has no "
                       "max pool layer (the /mtdeploy extension holds it)")
    edge = edges[0]
    drive = 1.0 / float_gain(graph[edge.align].attrs) if edge.align else 1.0
    try:
        neuron, bias, exact = neuron_group(pop, drive, steps)
    except InputError as exc:
        return Finding("structure", pop.label(), str(exc))
    if is_source(graph[edge.producer]) and all(is_alignment(n) for n in tree_nodes(graph, pop)):
        # (its layer would be an identity matrix over the whole input: 39,600^2 for PilotNet)
        return Finding("structure", pop.label(), "a population fed the input directly (a NetX "
                       "input block with a neuron) has no layer mtdeploy writes: its input "
                       "layers carry no neuron")
    delayed = [n.name for n in tree_nodes(graph, pop) if kind_of(n).temporal]
    if delayed:
        return Finding("structure", pop.label(), f"synaptic delays ({', '.join(delayed)}): "
                       "mtdeploy writes no NetX delays, and its window semantics (nothing "
                       "delayed past a window) differ from a stock stream")
    if not layers:
        return {}
    problem = bias_range_problem(np.asarray(bias, np.int64))
    if problem:   # known before the synapses are probed (a VGG-16-224 classifier: minutes)
        return Finding("range", pop.label(), problem)
    key = edge.align or edge.producer
    syn = _synapse(graph, pop, key, spatial)
    if syn["type"] == "dense" and spatial:
        size = int(np.prod(graph[key].shape))
        plan.layers.append({"type": "flatten", "shape": np.asarray([size, 1, 1], np.int64)})
        plan.names.append(f"flatten before {pop.name}")
    shape = pop.shape if syn["type"] == "conv" else (pop.size,)
    # (weights keep their integer type: a probed dense layer's is the smallest that holds it)
    layer = {k: v if k == "type" else np.asarray(v) if k == "weight" else np.asarray(v, np.int64)
             for k, v in syn.items()}
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
