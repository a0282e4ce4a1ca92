"""The compile report: JSON for tools, Markdown for people."""
from __future__ import annotations

import dataclasses

from mtdeploy.version import __version__
from mtdeploy.ir.graph import Graph
from mtdeploy.ir.snn import incoming_edges, is_source, populations
from mtdeploy.passes.quantize import quantization_report


def build_report(graph: Graph, sched: dict, check, target: str, options, seconds: float) -> dict:
    layers = []
    for pop in populations(graph):
        if is_source(pop):
            continue
        row = {"layer": pop.name, "kind": pop.kind, "origin": pop.origin,
               "neuron": pop.attrs.get("neuron", "-"), "T": pop.T, "neurons": pop.size,
               "window": pop.attrs.get("window"), "exp": pop.attrs.get("exp"),
               "threshold": float(pop.params["threshold"]) if "threshold" in pop.params else None,
               "threshold_int": pop.attrs.get("threshold_int"),
               "inputs": [{"from": e.producer,
                           "alignment": graph[e.align].attrs["method"] if e.align else "stream"}
                          for e in incoming_edges(graph, pop)]}
        layers.append(row)
    report = {
        "mtdeploy_version": __version__, "model": graph.name, "target": target,
        "options": dataclasses.asdict(options), "compile_seconds": round(seconds, 3),
        "input": {"shape": list(graph.input.shape), "input_max": graph.meta.get("input_max"),
                  "input_exp": graph.meta.get("input_exp"), "input_bits": graph.meta.get("input_bits")},
        "layers": layers, "latency": sched["latency"],
        "quantization": quantization_report(graph) if graph.meta.get("quantized") else [],
        "bias_correction": graph.meta.get("bias_correction"),
        "alignment_nodes": len(sched["alignment"]),
    }
    if check is not None:
        report["budget"] = check.to_json()
    return report


def _quantization_markdown(rows: list[dict], corrected: dict | None) -> list[str]:
    if not rows:
        return []
    bias = (f"Biases absorb the mean current lost to weight rounding on {corrected['samples']} "
            "calibration samples." if corrected else
            "Biases are not corrected for weight rounding (compile with --calib to do so).")
    lines = ["", "## Fixed-point weights", "",
             "| layer | weights | non-zero kept | mantissa (effective) bits | exponent | "
             "max error / max weight | units |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['weights']} | {100 * r['nonzero_kept']:.1f}% | "
              f"{r['mantissa_bits']} | {r['weight_exp']} | {r['max_error']:.3g} | "
              f"{r.get('units', 'per layer')} |" for r in rows]
    lines += ["", bias]
    return lines + [f"- warning: {r['warning']}" for r in rows if "warning" in r]


def _input_markdown(inp: dict) -> list[str]:
    if "input_max_source" not in inp:
        return []
    lines = ["", "## Input range", "",
             f"|x| <= {inp['input_max']:.4g}, from {inp['input_max_source']}; {inp['input_bits']}-bit "
             f"integers of unit 2^-{inp['input_exp']} hold |x| <= {inp['representable_max']:.4g}."]
    if "calib_samples" in inp:
        lines.append(f"Calibration data: {inp['calib_samples']} samples, largest |x| "
                     f"{inp['calib_largest_abs']:.4g}, {inp['saturated_values']} values "
                     f"({100 * inp['saturated_share']:.2f}%) saturate.")
    return lines + ([f"- warning: {inp['warning']}"] if "warning" in inp else [])


def report_markdown(report: dict) -> str:
    lat = report["latency"]
    lines = [f"# mtdeploy build: {report['model']} for {report['target']}", "",
             f"mtdeploy {report['mtdeploy_version']}, compiled in {report['compile_seconds']} s; "
             f"alignment `{report['options']['alignment']}`, neuron `{report['options']['neuron']}`.",
             "", "## Latency", "",
             "| mean T (papers) | sum T | max T | sequential steps (one sample) | pipelined interval |",
             "|---|---|---|---|---|",
             f"| {lat['mean_T']:.2f} | {lat['sum_T']} | {lat['max_T']} | {lat['sequential_steps']} "
             f"| {lat['pipeline_interval_steps']} |", "", "## Layers", "",
             "| layer | neuron | T | neurons | window | threshold (int) | inputs |",
             "|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        th = f"{r['threshold']:.4g} ({r['threshold_int']})" if r["threshold"] is not None else "-"
        ins = ", ".join(f"{i['from']} [{i['alignment']}]" for i in r["inputs"])
        lines.append(f"| {r['layer']} | {r['neuron']} | {r['T']} | {r['neurons']} | "
                     f"{r['window']} | {th} | {ins} |")
    lines += _input_markdown(report["input"])
    lines += _quantization_markdown(report.get("quantization", []),
                                    report.get("bias_correction"))
    budget = report.get("budget")
    if budget and budget.get("markdown"):
        lines += ["", "## Hardware budget", "", budget["markdown"]]
    netx = report.get("netx")
    if netx:
        name = netx.get("file", "network.net")
        lines += ["", f"## NetX export ({name})", ""]
        if netx["loadable"]:
            lines.append("Stock `lava.lib.dl.netx` loads the `/layer` groups (see docs/netx.md for "
                         "when its run is exact); the `/mtdeploy` extension holds the full MT-SNN.")
        else:
            lines.append(f"Stock NetX cannot express this network, so no `.net` file is written; "
                         f"`{name}` holds the full MT-SNN (the `/mtdeploy` extension), which "
                         "mtdeploy's Lava processes run. Why:")
        lines += [f"- {f}" for f in netx["findings"]]
    lava = report.get("lava")
    if lava and lava.get("available"):
        kinds = ", ".join(f"{k} x{v}" for k, v in lava["processes_by_kind"].items())
        lines += ["", "## Lava process graph", "",
                  f"{lava['process_count']} processes ({kinds}); {lava['steps_per_sample']} "
                  f"steps per sample, {lava['hop_steps']} step per synapse hop.", "",
                  "| layer | T | window | processes |", "|---|---|---|---|"]
        for layer in lava["layers"]:
            procs = ", ".join(f"{k} x{v}" for k, v in layer["processes"].items())
            lines.append(f"| {layer['name']} | {layer.get('T', '-')} | {layer.get('window', '-')} "
                         f"| {procs} |")
    elif lava:
        lines += ["", "## Lava process graph", "", f"not built: {lava['reason']}"]
    return "\n".join(lines) + "\n"
