"""Layer-by-layer agreement ladder: QCFS ANN -> float SNN -> fixed-point SNN -> Lava.

When Lava's output disagrees with the ANN, this says where it starts: each row is one
population, each column the agreement between two neighbouring rungs (the fraction of
(sample, neuron) pairs with equal firing rates; for the readout, equal values). The first row
with a column below 1 names the layer and the step that broke.
"""
from __future__ import annotations

import numpy as np

from mtdeploy.ir.graph import Graph
from mtdeploy.ir.snn import is_readout, is_source, populations
from mtdeploy.sim.ann import ann_forward
from mtdeploy.sim.reference import resolve_device, simulate

PAIRS = (("ann", "float"), ("float", "fixed"), ("fixed", "lava"))


def _agree(a: np.ndarray | None, b: np.ndarray | None, exact: bool) -> tuple[float, float]:
    """(fraction of equal entries, max |a - b|); NaN for a rung the network does not have."""
    if a is None or b is None:
        return float("nan"), float("nan")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = a == b if exact else np.isclose(a, b, rtol=1e-9, atol=1e-12)
    return float(same.mean()) if same.size else 1.0, float(np.abs(a - b).max(initial=0.0))


def ladder(graph: Graph, x, seed: int | None = None, timeout_s: float | None = 600.0,
           device: str = "cpu") -> list[dict]:
    """One row per population (input excluded), in topological order.

    Spiking rows compare firing rates (count / T; the ANN's activation / threshold, i.e. its
    level / levels, from :func:`mtdeploy.sim.ann.ann_forward`); readout rows the
    outputs in ANN units. ``fixed`` vs ``lava`` must agree exactly; the other pairs measure
    conversion (ANN -> float SNN) and quantization (float -> fixed) error. Each row carries
    ``diverges``: the pairs below full agreement, and ``first`` marks the first such row.
    ``device`` is where the reference stages run (Lava runs on its CPU simulator).
    """
    # Imported here, not at the top: importing this module (the package's lazy exports) must
    # not import Lava.
    from mtdeploy.targets.loihi2.lava.network import run_lava

    resolve_device(device)
    x = np.asarray(x, dtype=np.float64)
    ann = {k: v.numpy() for k, v in ann_forward(graph, x, return_all=True).items()}
    flt = simulate(graph, x, mode="float", seed=seed, device=device)
    fix = simulate(graph, x, mode="fixed", seed=seed, device=device)
    lava_out, lava_counts = run_lava(graph, x, fixed_point=True, seed=seed, timeout_s=timeout_s,
                                     record_counts=True)
    rows, seen_first = [], False
    # A network read from a stock NetX file (CUBA LIF populations, no threshold) has no ANN.
    has_ann = all("threshold" in p.params for p in populations(graph)
                  if not (is_source(p) or is_readout(p)))
    for pop in populations(graph):
        if is_source(pop):
            continue
        if is_readout(pop):
            series = {"ann": ann[graph.output] if has_ann else None, "float": flt.output,
                      "fixed": fix.output, "lava": lava_out}
        else:
            series = {"ann": ann[pop.name] / float(pop.params["threshold"]) if has_ann else None,
                      "float": flt.counts[pop.name] / pop.T,
                      "fixed": fix.counts[pop.name] / pop.T,
                      "lava": lava_counts[pop.name] / pop.T}
        row = {"layer": pop.name, "kind": pop.kind, "neuron": pop.attrs.get("neuron"),
               "T": pop.T, "neurons": pop.size, "agreement": {}, "max_abs_diff": {}}
        for a, b in PAIRS:
            frac, diff = _agree(series[a], series[b], exact=(a, b) == ("fixed", "lava"))
            row["agreement"][f"{a}-{b}"] = frac
            row["max_abs_diff"][f"{a}-{b}"] = diff
        if is_readout(pop):
            row["argmax_agreement"] = {f"{a}-{b}": float(np.mean(series[a].argmax(1)
                                                                 == series[b].argmax(1)))
                                       for a, b in PAIRS if series[a] is not None}
        row["diverges"] = [k for k, v in row["agreement"].items() if v < 1.0]
        row["first"] = bool(row["diverges"]) and not seen_first
        seen_first = seen_first or row["first"]
        rows.append(row)
    return rows


def first_divergence(rows: list[dict], pair: str | None = None) -> dict | None:
    """The first row where any pair (or the given ``pair``, e.g. "fixed-lava") disagrees."""
    for row in rows:
        if (pair is None and row["diverges"]) or (pair is not None and pair in row["diverges"]):
            return {"layer": row["layer"], "pairs": row["diverges"]}
    return None


def format_ladder(rows: list[dict], pairs: tuple[str, ...] | None = None) -> str:
    """A plain-text table of the ladder (agreement fractions), the first divergence marked.

    ``pairs`` limits the mark to those pairs (e.g. the ones that must agree exactly).
    """
    first = first_divergence(rows) if pairs is None else next(
        (d for d in (first_divergence(rows, p) for p in pairs) if d is not None), None)
    first_layer = first["layer"] if first else None
    head = f"{'layer':<20} {'kind':<8} {'T':>3} {'n':>6}  " + "  ".join(
        f"{a + '-' + b:>11}" for a, b in PAIRS)
    lines = [head]
    for r in rows:
        cells = "  ".join(f"{r['agreement'][a + '-' + b]:>11.4f}" for a, b in PAIRS)
        mark = "  <- first divergence" if r["layer"] == first_layer else ""
        lines.append(f"{r['layer']:<20} {r['kind']:<8} {r['T']:>3} {r['neurons']:>6}  "
                     f"{cells}{mark}")
    lines.append("(fraction of equal values: firing rates of spiking layers, output values of the "
                 "readout)")
    for r in rows:
        # Float and fixed-point outputs are never equal to the bit, so the readout's value
        # agreement says little there; its prediction agreement and error are what matter.
        if "argmax_agreement" in r:
            pairs_text = ", ".join(f"{k} {v:.4f} (max |diff| {r['max_abs_diff'][k]:.3g})"
                                   for k, v in r["argmax_agreement"].items())
            lines.append(f"{r['layer']} argmax agreement: {pairs_text}")
    return "\n".join(lines)
