"""``mtdeploy ladder``: compare a build layer by layer from the ANN down to Lava; exit 1 when
a pair that must agree exactly does not."""
from __future__ import annotations

import numpy as np

from mtdeploy.api import load_build
from mtdeploy.cli.simulate import open_samples
from mtdeploy.io import check_samples
from mtdeploy.targets.loihi2.lava import first_divergence, format_ladder, ladder
from mtdeploy.validate import integer


def run(a) -> int:
    samples = integer("samples", a.samples, 1)
    x, _ = open_samples(a.input)
    graph = load_build(a.build)
    x, _ = check_samples(np.asarray(x[:samples]), input_shape=graph.input.shape,
                         what=str(a.input))
    rows = ladder(graph, x, device=a.device)
    n = len(x)
    # ANN -> float SNN and fixed-point SNN -> Lava must agree exactly (avg-repeat); float ->
    # fixed differs by the quantization error, which is information, not a fault.
    exact_ann = graph.meta.get("alignment") == "avg-repeat" and graph.meta.get("neuron") == "if"
    pairs = ("ann-float", "fixed-lava") if exact_ann else ("fixed-lava",)
    print(format_ladder(rows, pairs))
    if graph.meta.get("neuron") == "cuba":
        print("(a NetX file's CUBA LIF or sigma-delta network has no ANN: its ann column is nan)")
    elif not exact_ann:
        print("(ttm/none alignment or TPP neurons approximate the ANN: ann-float is information)")
    broken = [(pair, first_divergence(rows, pair)) for pair in pairs]
    broken = [(pair, row) for pair, row in broken if row is not None]
    quant = first_divergence(rows, "float-fixed")
    if quant is not None:
        print(f"float -> fixed point: quantization first changes spikes at layer {quant['layer']}")
    if not broken:
        said = {"ann-float": "ANN = float SNN", "fixed-lava": "fixed-point SNN = Lava"}
        print(f"{' and '.join(said[p] for p in pairs)} on every layer ({n} samples)")
        return 0
    for pair, row in broken:
        print(f"first divergence {pair}: layer {row['layer']}")
    return 1
