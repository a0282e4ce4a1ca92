"""The NetX front end: ``read_netx(path) -> Graph`` (the writer is mtdeploy.targets.loihi2.netx).

* A file mtdeploy wrote (``/mtdeploy`` extension present): the exact MT-SNN graph back, after
  checking that the stock layers are still the ones the graph produces (a file edited after
  writing would otherwise be simulated as something it no longer is).
* Any other NetX file (lava-dl slayer's ``export_hdf5``, lava-dl's tutorial networks:
  input/dense/conv/flatten layers with CUBA, LOIHI or SDNN neurons, an input layer with a
  neuron, dense delays), or ``use_extension=False``: the network as stock netx runs it, as
  ``cuba`` populations (mtdeploy.kinds.neurons.CubaKind, bit-exact with Lava's ``fixed_pt``
  LIF, including netx's conversion of dense weights) and ``sdnn`` populations (SigmaDeltaKind,
  Lava's Delta/SigmaDelta/Sigma), with ``delay`` nodes. Every layer runs ``steps`` steps per
  sample (a stock run with ``reset_interval=steps``; sigma-delta layers from the state a stock
  stream reaches before the sample); the input is presented on every step; the output is the
  last layer's spike rate (mean payload), or its mean input current when that layer is a
  non-spiking accumulator (as mtdeploy writes its readout). docs/netx.md §6.

Unreadable, truncated or malformed files raise InputError with the reason, never a traceback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Graph, Node
from mtdeploy.ir.kind import kind_of
from mtdeploy.ir.serialize import graph_from_json
from mtdeploy.ir.snn import incoming_edges, is_readout, tree_nodes
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import tree_int_forward
from mtdeploy.targets.loihi2.netx.kinds import (DELAY, PRESENTATION, READOUT, NetxForm,
                                                form_for_layer, form_for_neuron, form_for_part)
from mtdeploy.targets.loihi2.netx.plan import plan_netx
from mtdeploy.targets.loihi2.netx.schema import (DECAY_UNITY, DELAY_MAX, NON_SPIKING_VTH,
                                                 extension_json,
                                                 extension_text, read_netx_layers, scalar_int,
                                                 stock_dense_weights, validate_netx_layers,
                                                 yx_pair)
from mtdeploy.targets.loihi2.netx.writer import (EXTENSION_FORMAT, EXTENSION_VERSION,
                                                 extension_digest)
from mtdeploy.validate import graph_values

DEFAULT_STEPS = 16
# What netx builds for a dense layer without a neuron group (hdf5.Network.create_dense).
NETX_DEFAULT_NEURON = {"type": "CUBA", "iDecay": 0, "vDecay": DECAY_UNITY, "vThMant": 1 << 17}


def read_netx(path, *, steps: int | None = None, use_extension: bool = True) -> Graph:
    """A converted, quantized IR graph from a NetX ``.net`` file.

    ``steps`` sets T of every layer when the stock layers are read (default: the file's
    recommended ``reset_interval`` if mtdeploy wrote it, else 16); it does not apply to the
    exact graph read from the extension.
    """
    layers, ext = read_netx_layers(path)
    if ext is not None and use_extension:
        return _graph_from_extension(path, layers, ext)
    if steps is None:
        steps = DEFAULT_STEPS
        if ext is not None:
            try:
                steps = int(extension_json(ext, "stock", path)["reset_interval"])
            except (InputError, KeyError, TypeError, ValueError):
                pass
    if int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    try:
        return _stock_graph(path, layers, int(steps))
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        # a layer the validator let through that still does not make sense as a network
        raise InputError(f"{path}: cannot read the NetX layers as a network "
                         f"({type(exc).__name__}: {exc})") from None


def stock_run_settings(path) -> dict:
    """How to run an mtdeploy-written file in stock netx (its ``/mtdeploy/stock`` record)."""
    _, ext = read_netx_layers(path)
    if ext is None:
        raise InputError(f"{path}: no /mtdeploy extension (not written by mtdeploy)")
    return extension_json(ext, "stock", path)


# ---- the exact graph ----------------------------------------------------------------------
def _graph_from_extension(path, layers: list[dict], ext: dict) -> Graph:
    """The exact MT-SNN the extension holds, refused if the extension was edited (its digest),
    if a number in it is unusable, or if the stock layers no longer match it."""
    params = _extension_params(path, ext)
    stock = extension_json(ext, "stock", path)

    def params_of(i: int, nd: dict) -> dict:
        stored = params.get(str(i), {})
        return {p: np.asarray(stored[p]) for p in nd["params"]}

    g = graph_from_json(extension_json(ext, "graph", path), params_of, f"{path}: /mtdeploy/graph")
    # after the structure (whose errors are more specific), before any value is used
    texts = [extension_text(ext, key, path) for key in ("graph", "stock")]
    if ext.get("digest") != extension_digest(*texts, params):
        raise InputError(f"{path}: the mtdeploy extension fails its integrity check (the SHA-256 "
                         "of its graph, stock record and parameters does not match "
                         "/mtdeploy/digest): the file was edited or damaged after writing")
    graph_values(g, str(path))
    _runs(g, path)
    if isinstance(stock, dict) and stock.get("loadable") is False:
        if layers:
            raise InputError(f"{path}: stock layers were added to a file whose network has no "
                             "stock NetX form")
        return g
    try:
        plan = plan_netx(g)
    except Exception as exc:   # a graph that no longer plans cannot have produced these layers
        raise InputError(f"{path}: the mtdeploy extension does not describe a NetX-exportable "
                         f"network ({exc})") from None
    mismatch = _first_difference(plan.layers, layers)
    if mismatch:
        raise InputError(f"{path}: the stock layers differ from what the mtdeploy extension "
                         f"produces ({mismatch}); the file was edited after writing. Read the "
                         "stock layers with read_netx(path, use_extension=False)")
    return g


def _runs(g: Graph, path) -> None:
    """One all-zero sample through the graph's float form: a parameter whose shape does not
    fit its layer (in a file whose digest was recomputed after an edit) fails here, as an
    InputError, not inside a simulator."""
    try:
        ann_forward(g, np.zeros((1, *g.input.shape)))
    except InputError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: the mtdeploy extension's network does not compute "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _extension_params(path, ext: dict) -> dict:
    """The params (by node index) of an extension whose format and version check out."""
    fmt = ext.get("format")
    if fmt != EXTENSION_FORMAT:
        raise InputError(f"{path}: /mtdeploy/format is {fmt!r}, not {EXTENSION_FORMAT!r}")
    try:
        version = int(np.asarray(ext.get("version")).reshape(-1)[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        raise InputError(f"{path}: /mtdeploy/version is missing or not an integer") from None
    if version > EXTENSION_VERSION:
        raise InputError(f"{path}: mtdeploy extension version {version} is newer than this "
                         f"mtdeploy reads ({EXTENSION_VERSION}); upgrade mtdeploy")
    if version < EXTENSION_VERSION:
        raise InputError(f"{path}: mtdeploy extension version {version} has no integrity digest "
                         "(written by an older mtdeploy); compile the model again")
    params = ext.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise InputError(f"{path}: the mtdeploy extension's params are corrupt")
    return params


def _first_difference(expected: list[dict], actual: list[dict]) -> str | None:
    if len(expected) != len(actual):
        return f"{len(actual)} layers, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        where = _dict_difference(e, a)
        if where:
            return f"layer {i}: {where}"
    return None


def _dict_difference(e: dict, a) -> str | None:
    if not isinstance(a, dict) or set(e) != set(a):
        return f"keys {sorted(map(str, a)) if isinstance(a, dict) else a} != {sorted(e)}"
    for k in e:
        if isinstance(e[k], dict):
            sub = _dict_difference(e[k], a[k])
            if sub:
                return f"{k}/{sub}"
        elif isinstance(e[k], str):
            if not (isinstance(a[k], str) and e[k] == a[k]):
                return f"{k}={a[k]!r}, expected {e[k]!r}"
        elif not np.array_equal(np.asarray(e[k]), np.asarray(a[k])):
            return f"{k} differs"
    return None


# ---- the stock view -------------------------------------------------------------------------
def _is_accumulator(neuron: dict, bias: np.ndarray) -> bool:
    """A layer that cannot spike within Lava's state range and whose v/64 is mtdeploy's readout
    accumulator: non-leaky v of a non-persistent current, or netx's default neuron (persistent
    current, v = u + bias) when it has no bias."""
    if "iDecay" not in neuron or int(neuron["vThMant"]) < NON_SPIKING_VTH:
        return False     # not a LIF group (sigma-delta), or one that can fire
    plain = int(neuron["iDecay"]) == DECAY_UNITY and int(neuron["vDecay"]) == 0
    netx_default = int(neuron["iDecay"]) == 0 and int(neuron["vDecay"]) == DECAY_UNITY \
        and not np.any(bias)
    return plain or netx_default


def _bias_chw(layer: dict, out_shape: tuple[int, ...]) -> np.ndarray:
    """netx's bias forms (scalar, per channel, per neuron in (x, y, z) order) as (C, H, W)."""
    bias = np.asarray(layer.get("bias", 0)).astype(np.int64)
    if len(out_shape) == 3 and bias.ndim == 3:
        bias = bias.transpose(2, 1, 0)
    elif len(out_shape) == 3 and bias.ndim == 1:
        bias = bias[:, None, None]
    elif bias.ndim:
        bias = bias.reshape(-1)
    return np.broadcast_to(bias, out_shape).copy()


def _stock_graph(path, layers: list[dict], steps: int) -> Graph:
    """The layers as stock netx runs them, every layer ``steps`` steps from rest."""
    _refuse_unsupported(path, layers)
    blocks = [i for i, layer in enumerate(layers) if layer["type"] in ("dense", "conv")]
    g = Graph(Path(path).stem)
    prev = _presented_input(g, path, layers, blocks, steps)
    chain = [prev] if kind_of(prev).role == "activation" else []   # an input neuron
    for i in blocks:
        prev = _stock_block(g, path, layers[i], i, prev, steps, last=i == blocks[-1])
        chain.append(prev)
    if not is_readout(prev):
        prev = _add_from_table(g, "readout", form_for_part(READOUT),
                          {"bias": np.zeros(prev.shape, np.int64)}, [prev.name], steps,
                          "spike rate of the last layer")
    g.output = prev.name
    g.meta.update({"converted": True, "quantized": True, "source": "netx", "netx_steps": steps,
                   "alignment": "none", "neuron": "cuba", "v_init": 0.0, "seed": 0,
                   "input_exp": 0, "input_bits": 8, "input_max": 127.0})
    g.validate()
    # stock netx feeds block k one step after block k-1 (the first through a synapse hop,
    # unless it is an input neuron fed directly), all blocks running from the first step
    _stream_preludes(g, chain, first=0 if len(chain) > len(blocks) else 1)
    return g


def _stream_preludes(g: Graph, chain: list[Node], first: int) -> None:
    """The state each non-resetting population (sigma-delta: a kind with ``run_state``) has
    when a sample reaches it in a stock run: block k runs ``k + first`` steps before its
    window on its bias and its producer's output from before the producer's window (nothing
    the sample changes). Stored as the population's ``<state>_init`` params."""
    if not any(hasattr(kind_of(p), "run_state") for p in chain):
        return
    before = None                                  # the previous block's prelude output
    for k, pop in enumerate(chain):
        kind, steps = kind_of(pop), k + first
        if kind.role != "activation":
            break                                  # the readout: nothing after it
        current = torch.zeros((steps, 1, *pop.shape), dtype=torch.float64)
        if before is not None and steps > 1:       # a synapse hop: step t gets t-1's output
            edge = incoming_edges(g, pop)[0]
            current[1:] = tree_int_forward(g, pop.name, {edge.align or edge.producer:
                                                         before[:steps - 1, 0]}).unsqueeze(1)
            for node in tree_nodes(g, pop):        # a synaptic delay, the tree's last op
                if kind_of(node).temporal:
                    current = kind_of(node).forward_steps(node, current)
        pop.attrs["prelude"] = steps
        if hasattr(kind, "run_state"):
            before, state = kind.run_state(pop, current)
            pop.params.update({f"{name}_init": value[0].numpy() for name, value in state.items()})
        else:
            before = kind.simulate(pop, current, True, {})


def _refuse_unsupported(path, layers: list[dict]) -> None:
    """InputError for what the stock loader would not build and what mtdeploy cannot model."""
    problems = [f for f in validate_netx_layers(layers)
                if f.severity == "error" and f.rule == "structure"]
    if problems:
        raise InputError(f"{path}: not a NetX network the stock loader builds:\n"
                         + "\n".join(f"  - {f}" for f in problems))
    for i, layer in enumerate(layers):
        where = f"{path}: layer {i} ({layer['type']})"
        if layer["type"] == "dense_rec":
            raise InputError(f"{where}: recurrent layers are not supported by mtdeploy")
        if isinstance(layer.get("weight"), dict):
            raise InputError(f"{where}: complex weights are not supported by mtdeploy")
        neuron = layer.get("neuron", {})
        if "sigma_output" in neuron and "bias" in layer:
            raise InputError(f"{where}: a sigma_output layer with a bias makes netx fail (its "
                             "Sigma process takes no bias)")


def _presented_input(g: Graph, path, layers: list[dict], blocks: list[int], steps: int) -> Node:
    """The input node and the align node presenting it on every step, as netx feeds it."""
    if layers[0]["type"] == "input":
        in_shape = tuple(int(s) for s in np.asarray(layers[0]["shape"]).reshape(-1))
    else:
        w = np.asarray(layers[blocks[0]]["weight"])
        in_shape = (int(w.reshape(w.shape[0], -1).shape[1]),)
    inp = _add_from_table(g, "input", form_for_layer("input", path), {"shape": in_shape}, [], 1,
                     "/layer/0" if layers[0]["type"] == "input" else "network input")
    shown = _add_from_table(g, "align.input", form_for_part(PRESENTATION), {"steps": steps},
                            [inp.name], steps, "the input, presented on every step")
    if layers[0]["type"] != "input" or "neuron" not in layers[0]:
        return shown
    # An input block with a neuron: netx leaves Network.inp unconnected and builds the neuron
    # without the layer's bias (its weight/bias are the transform netx hands the data loader,
    # net.in_layer.transform); the input is what that neuron's a_in receives every step.
    neuron = _neuron_fields(layers[0]["neuron"])
    transform = {k: scalar_int(layers[0][k]) for k in ("weight", "bias") if k in layers[0]}
    g.meta["netx_input_transform"] = transform
    return _add_from_table(g, "input.neuron", form_for_neuron(neuron, f"{path}: layer 0"),
                           {"neuron": neuron, "bias": np.zeros(in_shape, np.int64),
                            "shape": in_shape, "input": True}, [shown.name], steps,
                           "/layer/0/neuron")


def _neuron_fields(group: dict) -> dict:
    """A neuron group's values: integers where they are integers, text and others as read."""
    out = {}
    for k, v in group.items():
        as_int = None if isinstance(v, str) else scalar_int(v)
        out[k] = v if as_int is None else as_int
    return out


def _stock_block(g: Graph, path, layer: dict, i: int, prev: Node, steps: int, last: bool) -> Node:
    """Layer ``i``'s synapse and neuron group (a flatten first where a dense reads a map)."""
    if layer["type"] == "dense" and len(prev.shape) > 1:
        prev = _add_from_table(g, f"layer{i}.flatten", form_for_layer("flatten", path), {},
                          [prev.name], steps, "netx flattens (x,y,z) as C,H,W")
    lin = _add_from_table(g, f"layer{i}", form_for_layer(layer["type"], path),
                     _fields(layer, path, i), [prev.name], steps, f"/layer/{i}")
    delay = _delays(layer, lin.shape, f"{path}: layer {i}")
    if delay is not None:
        lin = _add_from_table(g, f"layer{i}.delay", form_for_part(DELAY), {"delay": delay},
                              [lin.name], steps, f"/layer/{i}/delay")
    neuron = _neuron_fields(layer.get("neuron", NETX_DEFAULT_NEURON))
    bias = _bias_chw(layer, lin.shape)
    if last and _is_accumulator(neuron, bias):
        return _add_from_table(g, f"layer{i}.readout", form_for_part(READOUT), {"bias": bias},
                          [lin.name], steps, f"/layer/{i}/neuron")
    if last and "iDecay" in neuron and int(neuron["vThMant"]) >= NON_SPIKING_VTH:
        raise InputError(f"{path}: the output layer {i} never spikes and is not a non-leaky "
                         "accumulator (iDecay=4096, vDecay=0): mtdeploy cannot read it out")
    return _add_from_table(g, f"layer{i}.neuron", form_for_neuron(neuron, f"{path}: layer {i}"),
                      {"neuron": neuron, "bias": bias, "shape": lin.shape, "input": False},
                      [lin.name], steps,
                      f"/layer/{i}/neuron")


def _delays(layer: dict, out_shape: tuple[int, ...], where: str) -> np.ndarray | None:
    """A dense layer's delays per output neuron as netx applies them (clamped to 62; a scalar
    for every neuron), None where there are none (netx ignores a conv layer's delay)."""
    if layer["type"] != "dense" or "delay" not in layer:
        return None
    d = np.asarray(layer["delay"])
    if d.dtype.kind not in "iuf" or not np.all(np.isfinite(d)) or np.any(d < 0) \
            or not np.all(d == np.round(d)):
        raise InputError(f"{where}: delays must be non-negative integers")
    d = np.clip(d, 0, DELAY_MAX).astype(np.int64)
    n_out = int(np.prod(out_shape))
    if d.size == 1:
        d = np.full(n_out, int(d.reshape(-1)[0]))
    elif d.ndim != 1 or d.size != n_out:
        raise InputError(f"{where}: delays of shape {d.shape} are per input or per synapse; "
                         f"mtdeploy models delays per output neuron ({n_out},), as slayer "
                         "writes them")
    return d.reshape(out_shape) if np.any(d) else None


def _add_from_table(g: Graph, name: str, found: tuple[str, NetxForm], fields: dict,
                    inputs: list[str], steps: int, origin: str) -> Node:
    """A node of the kind the NetX table picked, read from ``fields``, added with its shape."""
    kind_name, form = found
    attrs, params = form.read(fields)
    return _add(g, Node(name, kind_name, inputs, attrs, params, T=steps, origin=origin))


def _add(g: Graph, node: Node) -> Node:
    g.add(node)
    try:
        node.shape = tuple(int(s) for s in kind_of(node).infer_shape(
            node, [g[i].shape for i in node.inputs]))
    except InputError as exc:
        raise InputError(f"{node.origin}: {exc}") from None
    return node


def _fields(layer: dict, path, i: int) -> dict:
    """A layer's synapse in mtdeploy's conventions: integer weights as the stock run applies
    them, conv geometry as (y, x) lists."""
    w = np.asarray(layer["weight"])
    if layer["type"] == "dense":
        n_out = int(np.prod(layer["shape"]))
        w = w.astype(np.int64).reshape(n_out, -1)
        try:
            w = stock_dense_weights(w)
        except ValueError as exc:
            raise InputError(f"{path}: layer {i}: {exc}") from None
        return {"weight": w}
    w = w.astype(np.int64)
    return {"weight": w.reshape(w.shape[:4]), "stride": yx_pair(layer["stride"]),
            "padding": yx_pair(layer["padding"]), "dilation": yx_pair(layer["dilation"]),
            "groups": int(np.asarray(layer["groups"]).reshape(-1)[0])}
