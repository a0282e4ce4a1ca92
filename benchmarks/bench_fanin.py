"""Fan-in splitting at scale: the issue's global-pool network on the bundled profiles.

``Conv(3,C,3,p=1) -> QCFS -> Conv(C,C,3,p=1) -> QCFS -> AdaptiveAvgPool2d(1) -> Linear(C,10)``
at 3xSxS (random weights). The pool is folded into the readout, so each readout neuron reads
C*S*S producer neurons; before fan-in splitting no profile held it. Per row: the readout's
fan-in, the partial-sum stages chosen for the profile, the readout's window (one more hop),
cores, chips, whether it fits, and the wall time and peak memory of ``mtdeploy compile`` (all
outputs written), each in a fresh process.

    .venv/bin/python benchmarks/bench_fanin.py [--sizes 64x64,256x128] [--target hala_point]

Prints a table and writes benchmarks/results/fanin.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, resource, sys, time
import torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from mtdeploy.api import compile_model
from mtdeploy.nn import QCFS, save_traced
channels, size, target, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), QCFS(4, 1.0),
                      nn.Conv2d(channels, channels, 3, padding=1), QCFS(4, 1.0),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)).eval()
save_traced(model, torch.rand(1, 3, size, size), out + "/model.pt")
t0 = time.perf_counter()
build = compile_model(out + "/model.pt", target=target, out_dir=out + "/build", input_max=1.0)
seconds = time.perf_counter() - t0
readout = build.graph[build.graph.output]
split = readout.attrs.get("fan_in_split", {})
stages = [v for v in split.values()]
t = build.check.totals
print(json.dumps({"channels": channels, "size": size, "target": target,
                  "readout_fan_in": channels * size * size,
                  "blocks": stages, "readout_window": readout.attrs["window"],
                  "cores": t["cores"], "chips": t["chips"], "fits": build.check.fits,
                  "compile_s": round(seconds, 1),
                  "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "files": sorted(build.files)}))
"""


def run(channels: int, size: int, target: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(channels), str(size),
                               target, tmp], capture_output=True, text=True)
    if proc.returncode:
        return {"channels": channels, "size": size, "target": target,
                "error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64x64,256x128", help="CxS pairs, comma-separated")
    ap.add_argument("--target", default="hala_point")
    args = ap.parse_args()
    rows = []
    print(f"{'C x S':>10} {'fan-in':>10} {'stages':>12} {'window':>9} {'cores':>6} "
          f"{'chips':>5} {'fits':>5} {'compile s':>9} {'peak MiB':>8}")
    for pair in args.sizes.split(","):
        channels, size = (int(v) for v in pair.split("x"))
        row = run(channels, size, args.target)
        rows.append(row)
        if "error" in row:
            print(f"{pair:>10} error: {row['error']}")
            continue
        print(f"{pair:>10} {row['readout_fan_in']:>10,} {str(row['blocks']):>12} "
              f"{str(row['readout_window']):>9} {row['cores']:>6} {row['chips']:>5} "
              f"{str(row['fits']):>5} {row['compile_s']:>9} {row['peak_MiB']:>8}")
    out = HERE / "results" / "fanin.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
