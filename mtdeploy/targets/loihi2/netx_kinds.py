"""The NetX backend's per-kind table: how each node kind reads from and writes to NetX layers.

One entry per kind that has a NetX form, keyed by ``NodeKind.name``; a kind without an entry
has no stock NetX form (its network is written extension-only, ``network.mtsnn.h5``). Synapse
kinds map to a layer ``type``; population kinds to a neuron group (``neuron``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
from mtdeploy.targets.loihi2.netx_neurons import cuba_neuron, if_as_cuba, readout_as_cuba


@dataclass(frozen=True)
class NetxForm:
    #: the NetX layer type a synapse kind is read from / written as
    layer_type: str | None = None
    #: the NetX neuron types a population kind is read from
    neuron_types: tuple[str, ...] = ()
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
    "qcfs": NetxForm(neuron=if_as_cuba),
    "readout": NetxForm(neuron=readout_as_cuba),
    "cuba": NetxForm(neuron_types=("CUBA", "LOIHI"), read=_read_cuba, neuron=_cuba_as_cuba),
}


def form_for_layer(type_: str, where) -> tuple[str, NetxForm]:
    for name, form in NETX_FORMS.items():
        if form.layer_type == type_ and form.read is not None:
            return name, form
    raise InputError(f"{where}: NetX layer type {type_!r} is not supported by mtdeploy")


def form_for_neuron(neuron: dict, where: str) -> tuple[str, NetxForm]:
    for name, form in NETX_FORMS.items():
        if neuron.get("type") in form.neuron_types:
            return name, form
    raise InputError(f"{where}: neuron type {neuron.get('type')!r} is not supported by mtdeploy "
                     "(it reads CUBA neurons)")


def synapse_fields(node: Node) -> dict | None:
    form = NETX_FORMS.get(node.kind)
    return form.write(node) if form is not None and form.write is not None else None


def neuron_group(pop: Node, drive: float, steps: int) -> tuple[dict, np.ndarray, bool]:
    form = NETX_FORMS.get(pop.kind)
    if form is None or form.neuron is None:
        raise InputError(f"{pop.label()}: a {pop.kind} population has no NetX neuron")
    return form.neuron(pop, drive, steps)
