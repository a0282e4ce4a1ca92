"""The hardware budget checker: every finding at once, each naming its layer and rule.

``check`` never raises for resource problems (only for unusable input such as a bad profile):
it costs the network (resources.py), partitions it (partition.py), applies the design rules
below and estimates energy and latency (mtdeploy.metrics.energy). A rule is a function
``(graph, net, profile, placement) -> list[Finding]``; ``RULES`` lists them.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field


from mtdeploy.findings import SEVERITIES, Finding
from mtdeploy.ir.graph import Graph
from mtdeploy.kinds import kind_of
from mtdeploy.metrics.energy import estimate
from mtdeploy.passes.quantize import STATE_BITS, mantissa_bits
from mtdeploy.targets.partition import Placement, partition
from mtdeploy.targets.profiles import Profile, list_profiles, load_profile
from mtdeploy.targets.fanin import plan_splits, with_stages
from mtdeploy.targets.resources import RESOURCES, Network, extract, limits

# per-core resources: rule name, unit divisor (bits -> bytes), unit
_CORE_RULES = {"neurons": ("neurons_per_core", 1, "neurons"),
               "state_bits": ("state_memory", 8, "bytes"),
               "synaptic_bits": ("synaptic_memory", 8, "bytes"),
               "fan_in": ("fan_in", 1, "axons"),
               "fan_out": ("fan_out", 1, "axons")}


@dataclass
class CheckReport:
    profile: str
    network: str
    strategy: str
    findings: list[Finding]
    per_layer: list[dict]
    placement: Placement
    totals: dict
    energy: dict
    latency: dict
    smallest_fitting_profile: str | None = None
    seconds: float = 0.0
    assumptions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict:
        return {"profile": self.profile, "network": self.network, "fits": self.fits,
                "strategy": self.strategy, "findings": [asdict(f) for f in self.findings],
                "smallest_fitting_profile": self.smallest_fitting_profile,
                "totals": self.totals, "per_layer": self.per_layer, "energy": self.energy,
                "latency": self.latency, "placement": self.placement.to_json(),
                "profile_assumptions": self.assumptions, "seconds": round(self.seconds, 3),
                "markdown": self.to_markdown()}

    def to_markdown(self) -> str:
        t, lat, en = self.totals, self.latency, self.energy
        verdict = "fits" if self.fits else "does NOT fit"
        lines = [f"**{self.network}** {verdict} on **{self.profile}**: {t['cores']} cores on "
                 f"{t['chips']} chip(s) (the target has {t['chips_available']} chip(s), "
                 f"{t['cores_available']:,} cores); {t['neurons']:,} neurons, {t['synapses']:,} synapses "
                 f"({t['synaptic_memory_bytes'] / 2**20:.2f} MiB synaptic memory).", ""]
        if not self.fits and self.smallest_fitting_profile:
            lines += [f"Smallest bundled profile it fits: **{self.smallest_fitting_profile}**.", ""]
        if self.findings:
            lines += ["| severity | rule | layer | used | limit | message |", "|---|---|---|---|---|---|"]
            for f in self.findings:
                lines.append(f"| {f.severity} | {f.rule} | {f.node or 'network'} | {_num(f.used)} | "
                             f"{_num(f.limit)} | {f.message} |")
            lines.append("")
        lines += ["| layer | T | neurons | synapses | syn. memory (B) | encoding | tiling | cores | "
                  "neurons/core | state B/core | syn. B/core | fan-in/core | fan-out/core |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.per_layer:
            pc = r["per_core"]
            lines.append(f"| {r['layer']} | {r['T']} | {r['neurons']:,} | {r['synapses']:,} | "
                         f"{r['synaptic_memory_bytes']:,} | {'/'.join(r['encoding']) or '-'} | "
                         f"{_tiling(r)} | {r['cores']} | "
                         + " | ".join(f"{_num(pc[k][0])}/{_num(pc[k][1])}"
                                      for k in ("neurons", "state_bytes", "synaptic_bytes",
                                                "fan_in", "fan_out")) + " |")
        lines += ["", f"Placement ({self.strategy}): {t['inter_chip_messages']:.4g} of "
                  f"{t['messages']:.4g} spike messages per sample cross chips.",
                  f"Latency: {lat['sequential_steps']} steps (sum T {lat['sum_T']}, mean T "
                  f"{lat['mean_T']:.2f}, hop {lat['hop_steps']}), {lat['step_ns_mean']:.0f} ns per "
                  f"step on average = {lat['latency_us']:.1f} us; pipelined, a new sample every "
                  f"{lat['pipeline_interval_steps']} steps ({lat['throughput_samples_per_s']:.4g} "
                  f"samples/s).",
                  f"Energy per sample: {en['energy_uJ']:.4g} uJ on the profile's per-op figures "
                  f"({en['activity']['synops']:.4g} SynOps, {en['activity']['spike_estimate']}); "
                  f"papers' 45 nm convention: SNN {en['paper_energy']['snn_uJ']:.4g} uJ vs ANN "
                  f"{en['paper_energy']['ann_uJ']:.4g} uJ.",
                  f"Profile assumptions (unpublished figures): {', '.join(self.assumptions) or 'none'}."]
        return "\n".join(lines)


def _tiling(row: dict) -> str:
    tiles = "x".join(map(str, row["tiling"]))
    return f"{row['stages']} stages of {tiles}" if "stages" in row else tiles


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{int(x):,}" if float(x).is_integer() else f"{x:.4g}"


# ---- rules ---------------------------------------------------------------------------------
def rule_weight_bits(graph: Graph, net: Network, profile: Profile, placement) -> list[Finding]:
    """Integer weights must fit the profile's weight mantissa."""
    out = []
    for node in graph:
        if not kind_of(node).weighted:
            continue
        if "weight_int" in node.params:
            bits = mantissa_bits(node.params["weight_int"])
        else:
            bits = graph.meta.get("weight_bits")
        if bits and bits > profile.max_weight_bits:
            out.append(Finding("weight_bits", node.label(),
                               f"{node.label()}: weights need {bits} bits (signed), the profile "
                               f"stores {profile.max_weight_bits}", bits, profile.max_weight_bits))
    return out


def rule_state_bits(graph: Graph, net: Network, profile: Profile, placement) -> list[Finding]:
    """The semantics (docs/semantics.md §3) keeps 24-bit neuron state; thresholds must fit it
    (error) and alignment accumulators should not saturate in the worst case (warning)."""
    need = int(graph.meta.get("state_bits", STATE_BITS))
    out = []
    if profile.state_bits < need:
        out.append(Finding("state_bits", None, f"the network's neurons keep {need}-bit state, the "
                           f"profile has {profile.state_bits}-bit state", need, profile.state_bits))
    top = 2 ** (profile.state_bits - 1) - 1
    amp_in = 2 ** (int(net.meta.get("input_bits", 8)) - 1) - 1
    for pop in net.populations.values():
        node = pop.node
        if node is not None and node.attrs.get("threshold_int", 0) > top:
            out.append(Finding("state_range", pop.label,
                               f"{pop.label}: threshold {node.attrs['threshold_int']} exceeds the "
                               f"{profile.state_bits}-bit state", node.attrs["threshold_int"], top))
        peak = 0.0
        for e in pop.edges:
            if not e.aligned:
                continue
            if e.gain is None:
                peak = None
                break
            amp = amp_in if not _source(net, e).on_chip else 1
            peak += e.t_in * e.gain * amp
        if peak and peak > top:
            out.append(Finding("state_range", pop.label,
                               f"{pop.label}: an alignment accumulator can reach {peak:.4g} in the "
                               f"worst case (all inputs firing every step), beyond the "
                               f"{profile.state_bits}-bit state: it saturates there",
                               peak, top, "warning"))
    return out


def rule_delay(graph: Graph, net: Network, profile: Profile, placement) -> list[Finding]:
    return [Finding("delay", pop.label, f"{pop.label}: synaptic delay {e.delay} from {e.producer} "
                    f"exceeds the profile's maximum {profile.max_delay}", e.delay, profile.max_delay)
            for pop in net.populations.values() for e in pop.edges if e.delay > profile.max_delay]


def rule_graded_input(graph: Graph, net: Network, profile: Profile, placement) -> list[Finding]:
    """The input reaches the first layer as graded values (input_bits wide)."""
    bits = int(net.meta.get("input_bits", 8))
    if profile.graded_spike_bits >= bits:
        return []
    return [Finding("graded_input", pop.label,
                    f"{pop.label}: reads {bits}-bit input values, but the profile's spikes carry "
                    f"{profile.graded_spike_bits}-bit payloads: the host must inject the input as "
                    f"bias currents or spike trains", bits, profile.graded_spike_bits, "warning")
            for pop in net.populations.values()
            if pop.stage_of is None and any(not _source(net, e).on_chip for e in pop.edges)]


def rule_per_core(graph: Graph, net: Network, profile: Profile, placement: Placement) -> list[Finding]:
    """A limit that even one neuron of a layer exceeds: splitting cannot help."""
    out = []
    for name, lp in placement.layers.items():
        label = net.populations[name].label
        for res, (need, limit) in lp.relaxed.items():
            rule, div, unit = _CORE_RULES[res]
            out.append(Finding(rule, label, f"{label}: one neuron needs {need / div:,.0f} {unit} of "
                               f"{rule.replace('_', ' ')}, a core has {limit / div:,.0f}; the layer "
                               f"cannot be split to fit (it was placed over the limit)",
                               need / div, limit / div))
    return out


def rule_chips(graph: Graph, net: Network, profile: Profile, placement: Placement) -> list[Finding]:
    if placement.n_cores <= profile.total_cores:
        return []
    chips = math.ceil(placement.n_cores / profile.cores_per_chip)
    return [Finding("chips", None, f"the network needs {placement.n_cores} cores = {chips} chips "
                    f"of {profile.cores_per_chip} cores; {profile.name} has {profile.chips} "
                    f"chip(s), {profile.total_cores} cores", chips, profile.chips)]


def rule_partial_sums(graph: Graph, net: Network, profile: Profile, placement) -> list[Finding]:
    """A partial-sum stage forwards its block's current each step as a graded message: its
    worst case (every input of the block active) must fit the profile's spike payload. One
    finding per split edge, naming its consumer."""
    top = 2 ** (profile.graded_spike_bits - 1) - 1 if profile.graded_spike_bits else 0
    amp_in = 2 ** (int(net.meta.get("input_bits", 8)) - 1) - 1
    worst: dict[tuple[str, str], float | None] = {}
    for pop in net.populations.values():
        if pop.stage_of is None:
            continue
        e = pop.edges[0]
        peak = None if e.gain is None else e.gain * (
            1 if net.populations[e.producer].on_chip else amp_in)
        key = (pop.stage_of, e.producer)
        before = worst.get(key, 0.0)
        worst[key] = None if peak is None or before is None else max(before, peak)
    out = []
    for (consumer, producer), peak in worst.items():
        if peak is not None and peak <= top:
            continue
        label = net.populations[consumer].label
        out.append(Finding("partial_sum_range", label,
                           f"{label}: a partial sum of its input from "
                           f"{net.populations[producer].label} can reach "
                           f"{'an unknown value' if peak is None else f'{peak:.4g}'}, beyond the "
                           f"profile's {profile.graded_spike_bits}-bit graded spikes", peak, top))
    return out


def _source(net: Network, e) -> "object":
    """The population an edge's values come from (through a partial-sum stage, its input)."""
    src = net.populations[e.producer]
    return net.populations[src.edges[0].producer] if src.stage_of is not None else src


def staged(net: Network, profile: Profile) -> Network:
    """``net`` with the partial-sum stages its fan-in needs on ``profile`` (targets/fanin.py)."""
    return with_stages(net, plan_splits(net, profile))


RULES = (rule_weight_bits, rule_state_bits, rule_delay, rule_graded_input, rule_partial_sums,
         rule_per_core, rule_chips)


# ---- the check ---------------------------------------------------------------------------------
def _layer_rows(net: Network, profile: Profile, placement: Placement) -> list[dict]:
    """One row per population; the partial-sum stages of one split edge share one row."""
    lim = limits(profile)
    rows: list[dict] = []
    stage_rows: dict[tuple[str, str], dict] = {}
    for name, lp in placement.layers.items():
        pop = net.populations[name]
        row = _layer_row(net, placement, name, lp, lim)
        if pop.stage_of is None:
            rows.append(row)
            continue
        key = (pop.stage_of, pop.edges[0].producer)
        if key not in stage_rows:
            consumer = net.populations[pop.stage_of].label
            producer = net.populations[key[1]].label
            row.update(layer=f"{consumer} [partial sums of {producer}]", node=f"{key[0]}/partial",
                       stages=1)
            rows.append(row)
            stage_rows[key] = row
            continue
        into = stage_rows[key]
        into["stages"] += 1
        for k in ("neurons", "accumulators", "synapses", "synaptic_memory_bytes",
                  "state_memory_bytes", "tiles", "cores", "synops"):
            into[k] += row[k]
        for k, (used, _) in row["per_core"].items():
            into["per_core"][k][0] = max(into["per_core"][k][0], used)
    return rows


def _layer_row(net: Network, placement: Placement, name: str, lp, lim) -> dict:
    pop = net.populations[name]
    peak = lp.usage().max(0)
    per_core = {"neurons": (peak[0], lim[0]), "state_bytes": (peak[1] / 8, lim[1] / 8),
                "synaptic_bytes": (peak[2] / 8, lim[2] / 8), "fan_in": (peak[3], lim[3]),
                "fan_out": (peak[4], lim[4])}
    return {"layer": pop.label, "node": name, "T": pop.T, "window": pop.window,
            "neurons": pop.size, "accumulators": pop.size * pop.accumulators,
            "synapses": int(lp.cost.synapses.sum()),
            "synaptic_memory_bytes": int(math.ceil(lp.cost.synaptic_bits.sum() / 8)),
            "state_memory_bytes": int(math.ceil(lp.cost.state_bits.sum() / 8)),
            "encoding": list(dict.fromkeys(lp.cost.encodings)),
            "producers": [e.producer for e in pop.edges],
            "tiling": list(lp.tiling.counts), "tiles": lp.tiling.n_tiles,
            "cores": int(len(placement.layer_cores(name))),
            "synops": float(lp.cost.synops.sum()),
            "per_core": {k: [float(u), float(m)] for k, (u, m) in per_core.items()}}


def _evaluate(graph: Graph, net: Network, profile: Profile, spike_counts, strategy: str,
              cache: dict) -> tuple[list[Finding], Placement]:
    placement = partition(net, profile, strategy, spike_counts, _split_cache=cache)
    findings = [f for rule in RULES for f in rule(graph, net, profile, placement)]
    order = {s: k for k, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return findings, placement


def _smallest_fitting(graph, base, current: Profile, spike_counts, cache) -> str | None:
    neurons = sum(p.size for p in base.populations.values() if p.on_chip and p.stage_of is None)
    for cand in list_profiles():
        if cand.name == current.name or cand.total_neurons < neurons:
            continue
        findings, _ = _evaluate(graph, staged(base, cand), cand, spike_counts, "greedy", cache)
        if not any(f.severity == "error" for f in findings):
            return cand.name
    return None


def check(graph: Graph, profile: str | Profile, spike_counts: dict[str, float] | None = None,
          strategy: str = "fm", suggest: bool = True) -> CheckReport:
    """Cost, partition and check ``graph`` on ``profile``; never raises for resource problems.

    ``spike_counts``: {population node name: mean spikes per sample} from a simulation; without
    it traffic and SynOps use the bound of T spikes per neuron. ``suggest``: when it does not
    fit, name the smallest bundled profile it fits (costs one more partition per candidate).
    """
    start = time.perf_counter()
    profile = load_profile(profile)
    base = extract(graph, profile.hop_steps)
    net = staged(base, profile)
    cache: dict = {}
    findings, placement = _evaluate(graph, net, profile, spike_counts, strategy, cache)
    est = estimate(net, placement, profile, spike_counts)
    rows = _layer_rows(net, profile, placement)
    totals = {"neurons": sum(r["neurons"] for r in rows),
              "accumulators": sum(r["accumulators"] for r in rows),
              "synapses": sum(r["synapses"] for r in rows),
              "synaptic_memory_bytes": sum(r["synaptic_memory_bytes"] for r in rows),
              "cores": placement.n_cores, "chips": placement.n_chips,
              "cores_available": profile.total_cores, "chips_available": profile.chips,
              "messages": placement.total_messages,
              "inter_chip_messages": placement.inter_chip_messages,
              "core_utilisation": {r: float(placement.core_usage[:, k].sum()
                                            / (limits(profile)[k] * max(placement.n_cores, 1)))
                                   for k, r in enumerate(RESOURCES)}}
    report = CheckReport(profile.name, net.name, strategy, findings, rows, placement, totals,
                         {k: est[k] for k in ("activity", "energy_uJ", "energy_parts_uJ", "paper_energy")},
                         est["latency"], assumptions=profile.assumptions())
    if suggest and not report.fits:
        report.smallest_fitting_profile = _smallest_fitting(graph, base, profile, spike_counts, cache)
    report.seconds = time.perf_counter() - start
    return report
