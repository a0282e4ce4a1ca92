"""Stock NetX neuron groups standing for mtdeploy's populations (the NetX writer's mapping).

Populations become CUBA neurons with ``iDecay=4096`` (the current does not persist: Lava's
current decay is du+1 = iDecay) and ``vDecay=0`` (no leak): non-leaky IF with netx's reset to
zero and strict ``v > vThMant``. Exact when every population has T = 1; otherwise the rate-coded
streaming approximation (docs/netx.md).
"""
from __future__ import annotations

import numpy as np

from mtdeploy.errors import InputError
from mtdeploy.ir.graph import Node
from mtdeploy.kinds.neurons import DECAY_UNITY, neuron_of
from mtdeploy.targets.loihi2.netx.schema import BIAS_MAX, BIAS_MIN, NON_SPIKING_VTH, VTH_MAX


def cuba_neuron(vth: int, i_decay: int = DECAY_UNITY, v_decay: int = 0) -> dict:
    """A CUBA neuron group; refDelay/gradedSpike as slayer writes them (netx ignores both)."""
    return {"type": "CUBA", "iDecay": int(i_decay), "vDecay": int(v_decay), "vThMant": int(vth),
            "refDelay": 1, "gradedSpike": 0}


def if_as_cuba(node: Node, drive: float, steps: int) -> tuple[dict, np.ndarray, bool]:
    """An IF population (reset by subtraction, v >= th, v(0) = v_init) as a stock CUBA neuron."""
    if neuron_of(node).name != "if":
        raise InputError(f"{node.label()}: {neuron_of(node).name} neurons (accumulate, then "
                         "fire with a probability) have no stock NetX neuron")
    th = int(node.attrs["threshold_int"])
    bias = np.asarray(node.params["bias_int"], np.int64)
    v0 = int(node.attrs.get("v_init_int", 0))
    if steps == 1 and drive == 1:
        # One step per window, so the reset mode never matters and the decision is
        # I + d > 0 with d = bias + v0 - (th - 1) (v > th-1 is v >= th on integers). Any split
        # d = bias' - vThMant is exact: keep vThMant = th - 1 - v0 unless the 13-bit bias
        # mantissa needs part of it.
        d = bias + v0 - (th - 1)
        lo, hi = BIAS_MIN - int(d.min()), BIAS_MAX - int(d.max())
        vth = int(np.clip(th - 1 - v0, max(lo, 0), max(min(hi, VTH_MAX), 0)))
        return cuba_neuron(vth), d + vth, node.T == 1
    # Streaming: the edge delivers 1/drive of mtdeploy's per-step units, so the neuron is scaled
    # down by drive. v_init, which netx cannot set, is spread over the window as a bias (it adds
    # v_init/T to the rate, as it adds v_init to the count), as far as the bias mantissa holds it.
    scaled = np.round(bias / drive).astype(np.int64)
    spread = np.round((bias + v0 / int(node.T)) / drive).astype(np.int64)
    in_range = (scaled >= BIAS_MIN) & (scaled <= BIAS_MAX)
    spread = np.where(in_range, np.clip(spread, BIAS_MIN, BIAS_MAX), scaled)
    return cuba_neuron(max(0, int(round(th / drive)) - 1)), spread, False


def readout_as_cuba(node: Node, drive: float, steps: int) -> tuple[dict, np.ndarray, bool]:
    """The readout as a non-spiking, non-leaky accumulator: v/64 = sum over steps of I + bias."""
    bias = np.asarray(node.params["bias_int"], np.int64)
    if drive != 1:
        bias = np.round(bias / drive).astype(np.int64)
    return cuba_neuron(NON_SPIKING_VTH), bias, steps == 1
