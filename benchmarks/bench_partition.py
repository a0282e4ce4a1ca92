"""Partitioning benchmark: synthetic-weight VGG-16 / ResNet-18 (CIFAR) and ResNet-34 (ImageNet)
with QCFS activations, checked on loihi2 / kapoho_point / hala_point with every registered
placement strategy. Reports cores, chips, inter-chip spike messages per sample and the wall time
of the whole check (cost model, split, pack, place, rules, estimates).

    .venv/bin/python benchmarks/bench_partition.py [--levels 4] [--nets vgg16_cifar,...]

Writes benchmarks/results/partition.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from synthetic import NETWORKS  # noqa: E402

from mtdeploy.targets.checker import check  # noqa: E402
from mtdeploy.targets.partition import STRATEGIES  # noqa: E402

PROFILES = ("loihi2", "kapoho_point", "hala_point")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, default=4, help="QCFS levels (= T) of every layer")
    ap.add_argument("--nets", default=",".join(NETWORKS), help="comma-separated subset")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "partition.json"))
    a = ap.parse_args(argv)

    rows = []
    header = (f"{'network':<18} {'profile':<13} {'strategy':<8} {'fits':<5} {'cores':>6} "
              f"{'chips':>5} {'inter-chip msgs':>15} {'all msgs':>10} {'check s':>8}")
    print(header)
    print("-" * len(header))
    for net_name in a.nets.split(","):
        t0 = time.perf_counter()
        graph = NETWORKS[net_name](levels=a.levels)
        build_s = time.perf_counter() - t0
        for profile in a.profiles.split(","):
            for strategy in a.strategies.split(","):
                t0 = time.perf_counter()
                report = check(graph, profile, strategy=strategy, suggest=False)
                seconds = time.perf_counter() - t0
                t = report.totals
                row = {"network": net_name, "profile": profile, "strategy": strategy,
                       "fits": report.fits, "cores": t["cores"], "chips": t["chips"],
                       "chips_available": t["chips_available"],
                       "inter_chip_messages": t["inter_chip_messages"], "messages": t["messages"],
                       "neurons": t["neurons"], "synapses": t["synapses"],
                       "synaptic_memory_bytes": t["synaptic_memory_bytes"],
                       "findings": [f"{f.rule}: {f.message}" for f in report.findings],
                       "latency_steps": report.latency["sequential_steps"],
                       "energy_uJ": report.energy["energy_uJ"],
                       "check_seconds": round(seconds, 3), "placement_seconds":
                           round(report.placement.seconds, 3), "graph_build_seconds": round(build_s, 3)}
                rows.append(row)
                print(f"{net_name:<18} {profile:<13} {strategy:<8} {'yes' if report.fits else 'NO':<5} "
                      f"{t['cores']:>6} {t['chips']:>5} {t['inter_chip_messages']:>15.4g} "
                      f"{t['messages']:>10.4g} {seconds:>8.2f}")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "levels": a.levels,
           "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
           "spike_estimate": "bound: T spikes per neuron per sample (no measured counts)",
           "rows": rows}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
