"""The NetX backend's per-kind table: how each node kind reads from and writes to NetX layers.

One entry per kind that has a NetX form of its own, keyed by ``NodeKind.name``. A synapse kind
without an entry (conv1d, pools, add) still reaches stock NetX inside a folded projection: the
writer materialises the tree into one dense (or conv) layer and checks it against the integer
map. A population kind without an entry has no stock neuron: its network is written
extension-only (``network.mtsnn.h5``) with that reason. Synapse kinds map to a layer ``type``, population kinds to a neuron group (``neuron``), and the parts of
a stock run that are neither (the input fed on every step, a non-spiking readout) to ``part``.
The writer and the reader (mtdeploy.frontends.netx) pick node kinds only through this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
from mtdeploy.targets.loihi2.netx.neurons import cuba_neuron, if_as_cuba, readout_as_cuba

# The parts of a stock run a kind can stand for (NetxForm.part).
PRESENTATION = "presentation"   # netx feeds the input on every step of a window
READOUT = "readout"             # the output: a layer that cannot fire (its voltage), or spike rates
DELAY = "delay"                 # a dense layer's synaptic delays (read only: never written)


@dataclass(frozen=True)
class NetxForm:
    """How one node kind appears in a NetX file; a field left None: the kind has no such side."""

    #: the NetX layer type a synapse kind is read from / written as
    layer_type: str | None = None
    #: the NetX neuron types a population kind is read from
    neuron_types: tuple[str, ...] = ()
    #: the part of a stock run (PRESENTATION, READOUT) the kind is read as
    part: str | None = None
    #: (attrs, params) from a layer's normalised fields (the reader)
    read: Callable[[dict], tuple[dict, dict]] | None = None
    #: the synapse fields when a projection is this node alone (the writer)
    write: Callable[[Node], dict] | None = None
    #: (neuron group, integer bias, exact) for a population, given the incoming edge's drive
    #: (integer units per step per unit spike rate) and the window of a stock run
    neuron: Callable[[Node, float, int], tuple[dict, np.ndarray, bool]] | None = None


def _read_conv(fields):
    w = np.asarray(fields["weight"], dtype=np.int64)
    attrs = {"stride": list(fields["stride"]), "padding": list(fields["padding"]),
             "dilation": list(fields["dilation"]), "groups": int(fields["groups"]),
             "in_channels": int(w.shape[1] * fields["groups"]), "out_channels": int(w.shape[0]),
             "kernel": [int(w.shape[2]), int(w.shape[3])]}
    return attrs, {"weight": w.astype(np.float32), "weight_int": w.astype(np.int32),
                   "bias": np.zeros(w.shape[0], np.float32)}


def _write_conv(node):
    a = node.attrs
    return {"type": "conv", "weight": np.asarray(node.params["weight_int"], np.int64),
            "stride": list(a["stride"]), "padding": list(a["padding"]),
            "dilation": list(a["dilation"]), "groups": int(a["groups"])}


def _read_dense(fields):
    w = np.asarray(fields["weight"], dtype=np.int64)
    return ({"in_features": int(w.shape[1]), "out_features": int(w.shape[0])},
            {"weight": w.astype(np.float32), "weight_int": w.astype(np.int32),
             "bias": np.zeros(w.shape[0], np.float32)})


def _write_dense(node):
    return {"type": "dense", "weight": np.asarray(node.params["weight_int"], np.int64)}


def _read_cuba(fields):
    n = fields["neuron"]
    attrs = {"iDecay": int(n["iDecay"]), "vDecay": int(n["vDecay"]), "vThMant": int(n["vThMant"])}
    bias = np.broadcast_to(np.asarray(fields.get("bias", 0), np.int64), fields["shape"]).copy()
    # The bias enters the voltage, not the (possibly persistent) current, so it is kept
    # apart from the bias_int the simulator adds to the current.
    return attrs, {"bias_mant": bias, "bias_int": np.zeros(fields["shape"], np.int64)}


def _read_sdnn(fields):
    """An SDNN group as netx builds it: Delta for an input layer, Sigma for a layer with
    ``sigma_output``, else SigmaDelta (ReLU, netx's only activation) with the layer's bias."""
    n = fields["neuron"]
    mode = "delta" if fields.get("input") else "sigma" if "sigma_output" in n else "sigma-delta"
    bias = np.broadcast_to(np.asarray(fields.get("bias", 0), np.int64), fields["shape"]).copy()
    return ({"mode": mode, "vThMant": int(n.get("vThMant") or 0)},
            {"bias_mant": bias, "bias_int": np.zeros(fields["shape"], np.int64)})


def _read_readout(fields):
    # a stock file carries no output scale: the logits stay in the file's integer units
    return {"exp": 0}, {"bias_int": fields["bias"]}


def _cuba_as_cuba(node, drive, steps):
    a = node.attrs
    return (cuba_neuron(a["vThMant"], a["iDecay"], a["vDecay"]),
            np.asarray(node.params["bias_mant"], np.int64), node.T == steps)


NETX_FORMS: dict[str, NetxForm] = {
    "input": NetxForm(layer_type="input",
                      read=lambda f: ({"shape": [int(s) for s in f["shape"]]}, {})),
    "conv": NetxForm(layer_type="conv", read=_read_conv, write=_write_conv),
    "linear": NetxForm(layer_type="dense", read=_read_dense, write=_write_dense),
    "flatten": NetxForm(layer_type="flatten", read=lambda f: ({}, {})),
    "align": NetxForm(part=PRESENTATION, read=lambda f: (
        {"method": "avg-repeat", "t_in": 1, "t_out": int(f["steps"])}, {})),
    "qcfs": NetxForm(neuron=if_as_cuba),
    "readout": NetxForm(part=READOUT, read=_read_readout, neuron=readout_as_cuba),
    "delay": NetxForm(part=DELAY, read=lambda f: ({}, {"delay": f["delay"]})),
    "cuba": NetxForm(neuron_types=("CUBA", "LOIHI"), read=_read_cuba, neuron=_cuba_as_cuba),
    # read only: mtdeploy writes no SDNN layers, so such a network is built extension-only
    "sdnn": NetxForm(neuron_types=("SDNN",), read=_read_sdnn),
}


def _first(match: Callable[[NetxForm], bool]) -> tuple[str, NetxForm] | None:
    return next(((name, form) for name, form in NETX_FORMS.items() if match(form)), None)


def form_for_layer(type_: str, where) -> tuple[str, NetxForm]:
    """The kind a NetX layer type is read as (InputError naming ``where`` if none)."""
    found = _first(lambda form: form.layer_type == type_ and form.read is not None)
    if found is None:
        raise InputError(f"{where}: NetX layer type {type_!r} is not supported by mtdeploy")
    return found


def form_for_neuron(neuron: dict, where: str) -> tuple[str, NetxForm]:
    """The population kind a NetX neuron group is read as (InputError naming ``where`` if none)."""
    found = _first(lambda form: neuron.get("type") in form.neuron_types)
    if found is None:
        raise InputError(f"{where}: neuron type {neuron.get('type')!r} is not supported by "
                         "mtdeploy (it reads CUBA, LOIHI and SDNN neurons)")
    return found


def form_for_part(part: str) -> tuple[str, NetxForm]:
    """The kind standing for a part of a stock run (PRESENTATION, READOUT)."""
    found = _first(lambda form: form.part == part)
    if found is None:
        raise KeyError(f"no NetX form stands for {part!r}")
    return found


def synapse_fields(node: Node) -> dict | None:
    """The layer fields of a projection that is ``node`` alone; None if its kind has none."""
    form = NETX_FORMS.get(node.kind)
    return form.write(node) if form is not None and form.write is not None else None


def neuron_group(pop: Node, drive: float, steps: int) -> tuple[dict, np.ndarray, bool]:
    """``pop`` as (neuron group, integer bias, exact); InputError if its kind has no NetX neuron."""
    form = NETX_FORMS.get(pop.kind)
    if form is None or form.neuron is None:
        raise InputError(f"{pop.label()}: a {pop.kind} population has no NetX neuron")
    return form.neuron(pop, drive, steps)
