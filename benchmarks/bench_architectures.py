"""The papers' architectures at their real sizes: check and compile time, peak memory, cores.

One row per network (benchmarks/architectures.py: random He weights, randomised BatchNorm,
QCFS thresholds calibrated on a few random inputs): VGG-16, ResNet-18/20/34 in the CIFAR
layout (3x32x32); VGG-16 and ResNet-34 in the ImageNet layout (3x224x224, the ResNet stem's
MaxPool as AvgPool); MTT's VGG-16 and ResNet-18 that squeeze the classifier's input.

Each model is saved as TorchScript (mtdeploy.nn.save_traced) and every measurement runs in a
fresh Python process, doing what the CLI verb does:
1. the target: ``check`` on loihi2 names the smallest bundled profile the network fits
   (what ``mtdeploy check`` suggests); the row's "fits on";
2. ``check`` on that profile (import, convert, quantize, schedule, budget, partition: what
   ``mtdeploy check`` runs) and ``compile`` on it (``mtdeploy.api.compile_model`` with every
   output written: network file, schedule.json, report.json, report.md), each ``--repeats``
   times; the row shows the minimum. Seconds are the call's wall time (interpreter start and
   the torch import excluded), "cpu s" its CPU time (the figure a busy machine disturbs
   least); peak memory is the process's VmHWM (the torch import included, about 0.4 GB).
   The row also says whether check and compile counted the same cores.
A network no bundled profile holds is compiled against the largest; its row says why, with
the time the verdict took. "layers" counts populations (spiking layers and the readout: 16
for VGG-16, 34 for ResNet-34). The load average is recorded: on a shared machine wall times grow
with it, CPU times far less.

    .venv/bin/python benchmarks/bench_architectures.py [--nets vgg16_cifar,...] [--repeats 2]

Prints a table and writes benchmarks/results/architectures.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import architectures as arch  # noqa: E402

from mtdeploy.nn import save_traced  # noqa: E402

CIFAR, IMAGENET = (3, 32, 32), (3, 224, 224)
#: name -> (model factory, input shape)
NETWORKS = {
    "vgg16_cifar": (lambda: arch.vgg16(), CIFAR),
    "resnet18_cifar": (lambda: arch.resnet18(), CIFAR),
    "resnet20_cifar": (lambda: arch.resnet20(), CIFAR),
    "resnet34_cifar": (lambda: arch.resnet34(), CIFAR),
    "vgg16_imagenet": (lambda: arch.vgg16(imagenet=True), IMAGENET),
    "resnet34_imagenet": (lambda: arch.resnet34(imagenet=True), IMAGENET),
    "mtt_vgg16_cifar_squeeze": (lambda: arch.vgg16_squeeze(), CIFAR),
    "mtt_resnet18_cifar_squeeze": (lambda: arch.resnet18_squeeze(), CIFAR),
}
SMALLEST, LARGEST = "loihi2", "hala_point"

# Run in a fresh interpreter: argv = model path, target, build directory, mode.
_CHILD = r"""
import json, sys, time
from mtdeploy.api import compile_model, deployable, load_model
from mtdeploy.errors import DoesNotFitError
from mtdeploy.passes import ConvertOptions
from mtdeploy.targets.checker import check
from mtdeploy.targets.profiles import load_profile

model, target, out, mode = sys.argv[1:5]
result = {}
t0, c0 = time.perf_counter(), time.process_time()
if mode == "check":
    profile = load_profile(target)
    graph, _ = deployable(load_model(model), ConvertOptions(input_max=1.0), profile)
    rep = check(graph, profile)
    result = {"fits": rep.fits, "smallest_fitting_profile": rep.smallest_fitting_profile,
              "cores": rep.totals["cores"], "chips": rep.totals["chips"],
              "findings": [f.message for f in rep.findings if f.severity == "error"]}
else:
    try:
        build = compile_model(model, target=target, out_dir=out, input_max=1.0)
        totals = build.check.totals
        result = {"fits": True, "files": build.files, "cores": totals["cores"],
                  "chips": totals["chips"], "neurons": totals["neurons"],
                  "synapses": totals["synapses"],
                  "populations": len(build.report["layers"]),
                  "lava_processes": build.report["lava"].get("process_count"),
                  "netx_file": build.report["netx"]["file"]}
    except DoesNotFitError as exc:
        result = {"fits": False, "findings": [f.message for f in exc.findings
                                              if f.severity == "error"]}
result["seconds"] = time.perf_counter() - t0
result["cpu_seconds"] = time.process_time() - c0
# VmHWM, not ru_maxrss: Linux keeps the pre-exec high-water mark in ru_maxrss, so a child
# started by a parent holding a large model would report the parent's memory
result["peak_rss_mb"] = next(int(line.split()[1]) for line in open("/proc/self/status")
                             if line.startswith("VmHWM")) / 1024
print("RESULT " + json.dumps(result))
"""


def _child(model: Path, target: str, out: Path, mode: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(model), target, str(out), mode],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:],
                "returncode": proc.returncode}
    return json.loads(line[len("RESULT "):])


def _best(runs: list[dict]) -> dict:
    """The run with the least wall time, with every run's wall/CPU seconds and peak memory."""
    ok = [r for r in runs if "error" not in r] or runs
    best = dict(min(ok, key=lambda r: r.get("seconds", float("inf"))))
    for key in ("seconds", "cpu_seconds", "peak_rss_mb"):
        best[f"all_{key}"] = [r.get(key) for r in runs]
    best["cpu_seconds"] = min((r["cpu_seconds"] for r in ok if "cpu_seconds" in r), default=None)
    return best


def save_model(name: str, directory: Path, calibration: int) -> tuple[Path, float]:
    """The network with random weights, calibrated thresholds, as TorchScript."""
    factory, shape = NETWORKS[name]
    torch.manual_seed(0)
    model = arch.randomize_bn(factory(), seed=1)
    x = torch.rand(calibration, *shape)
    t0 = time.perf_counter()
    arch.calibrate(model, x)
    path = directory / f"{name}.pt"
    save_traced(model, x[:2], path, check_trace=False)
    return path, time.perf_counter() - t0


def measure(name: str, directory: Path, calibration: int, timeout: float, repeats: int) -> dict:
    path, prep_s = save_model(name, directory, calibration)
    probe = _child(path, SMALLEST, directory / "unused", "check", timeout)
    target = SMALLEST if probe.get("fits") else (probe.get("smallest_fitting_profile") or LARGEST)
    checks, builds = [], []
    for _ in range(repeats):
        checks.append(probe if target == SMALLEST and not checks else
                      _child(path, target, directory / "unused", "check", timeout))
        builds.append(_child(path, target, directory / f"{name}.build", "compile", timeout))
    chk, build = _best(checks), _best(builds)
    return {"network": name, "input_shape": list(NETWORKS[name][1]), "target": target,
            "fits_bundled": bool(probe.get("fits") or probe.get("smallest_fitting_profile")),
            "check_on_loihi2": probe, "check": chk, "compile": build,
            "same_cores": chk.get("cores") == build.get("cores") if build.get("fits") else None,
            "model_mb": path.stat().st_size / 2**20, "prepare_seconds": prep_s,
            "load_average": os.getloadavg()}


HEADER = (f"{'network':<27} {'fits on':<13} {'layers':>6} {'neurons':>10} {'synapses':>14} "
          f"{'check s':>7} {'cpu':>5} {'compile s':>9} {'cpu':>5} {'peak GB':>7} {'cores':>6} "
          f"{'chips':>5} {'same':>4}")


def _row(r: dict) -> str:
    c, k = r["compile"], r["check"]
    if "error" in c:
        return f"{r['network']:<27} {r['target']:<13} error: {c['error']}"
    fits_on = r["target"] if c.get("fits") else "none"
    same = {True: "yes", False: "NO", None: "-"}[r["same_cores"]]
    return (f"{r['network']:<27} {fits_on:<13} {c.get('populations', '-'):>6} "
            f"{c.get('neurons', 0):>10,} {c.get('synapses', 0):>14,} "
            f"{k.get('seconds', float('nan')):>7.1f} {k.get('cpu_seconds') or float('nan'):>5.1f} "
            f"{c['seconds']:>9.1f} {c['cpu_seconds']:>5.1f} "
            f"{max(c['peak_rss_mb'], k.get('peak_rss_mb', 0)) / 1024:>7.2f} "
            f"{c.get('cores', '-'):>6} {c.get('chips', '-'):>5} {same:>4}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETWORKS), help="comma-separated subset")
    ap.add_argument("--calibration", type=int, default=4,
                    help="random inputs the QCFS thresholds are calibrated on")
    ap.add_argument("--repeats", type=int, default=2,
                    help="check and compile runs per network (the table shows the fastest)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "architectures.json"))
    a = ap.parse_args(argv)
    unknown = sorted(set(a.nets.split(",")) - set(NETWORKS))
    if unknown:
        ap.error(f"unknown networks {unknown}; known: {', '.join(NETWORKS)}")

    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.nets.split(","):
            rows.append(measure(name, Path(tmp), a.calibration, a.timeout, a.repeats))
            print(_row(rows[-1]), flush=True)
    for r in rows:
        c = r["compile"]
        if not c.get("fits") and "error" not in c:
            print(f"  {r['network']}: fits no bundled profile: {'; '.join(c['findings'][:2])}")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                               "cpus": os.cpu_count(), "repeats": a.repeats,
                               "load_average_end": os.getloadavg(), "rows": rows}, indent=1))
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
