"""The papers' architectures at their real sizes: compile time, peak memory, cores and chips.

One row per network (benchmarks/architectures.py: random He weights, randomised BatchNorm,
QCFS thresholds calibrated on a few random inputs): VGG-16, ResNet-18/20/34 in the CIFAR
layout (3x32x32); VGG-16 and ResNet-34 in the ImageNet layout (3x224x224, the ResNet stem's
MaxPool as AvgPool); MTT's VGG-16 and ResNet-18 that squeeze the classifier's input.

Each model is saved as TorchScript (mtdeploy.nn.save_traced) and every measurement runs in a
fresh Python process, as ``mtdeploy compile model.pt`` would:
1. the target: ``check`` on loihi2, the smallest bundled profile, which names the smallest
   bundled profile the network fits when it does not (what ``mtdeploy check`` suggests);
2. ``mtdeploy.api.compile_model(model.pt, target=that profile)`` with every output written
   (network file, schedule.json, report.json, report.md). Its seconds are the call's wall
   time (the interpreter and the torch import excluded); peak memory is the process's
   ru_maxrss (the import included). A network no bundled profile holds is compiled against
   the largest, and its row says so with the time the verdict took.

    .venv/bin/python benchmarks/bench_architectures.py [--nets vgg16_cifar,...]

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

# Run in a fresh interpreter: argv = model path, target, build directory.
_CHILD = r"""
import json, resource, sys, time
from mtdeploy.api import compile_model, load_model
from mtdeploy.errors import DoesNotFitError
from mtdeploy.passes import ConvertOptions, convert, quantize, schedule
from mtdeploy.targets.checker import check
from mtdeploy.targets.profiles import load_profile

model, target, out, mode = sys.argv[1:5]
result = {}
t0 = time.perf_counter()
if mode == "check":
    snn = quantize(convert(load_model(model), ConvertOptions(input_max=1.0)))
    schedule(snn, hop_steps=load_profile(target).hop_steps)
    rep = check(snn, target)
    result = {"fits": rep.fits, "smallest_fitting_profile": rep.smallest_fitting_profile,
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
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


def _child(model: Path, target: str, out: Path, mode: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model), target, str(out), mode],
                          capture_output=True, text=True, env=env, timeout=timeout)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:],
                "returncode": proc.returncode}
    return json.loads(line[len("RESULT "):])


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


def measure(name: str, directory: Path, calibration: int, timeout: float) -> dict:
    path, prep_s = save_model(name, directory, calibration)
    chk = _child(path, SMALLEST, directory / "unused", "check", timeout)
    target = SMALLEST if chk.get("fits") else (chk.get("smallest_fitting_profile") or LARGEST)
    build = _child(path, target, directory / f"{name}.build", "compile", timeout)
    return {"network": name, "input_shape": list(NETWORKS[name][1]), "target": target,
            "fits_bundled": bool(chk.get("fits") or chk.get("smallest_fitting_profile")),
            "check_on_loihi2": chk, "compile": build, "model_mb": path.stat().st_size / 2**20,
            "prepare_seconds": prep_s}


def _row(r: dict) -> str:
    c = r["compile"]
    if "error" in c:
        return f"{r['network']:<28} {r['target']:<13} error: {c['error']}"
    fit = "yes" if c.get("fits") else "NO"
    return (f"{r['network']:<28} {r['target']:<13} {fit:<4} {c.get('populations', '-'):>5} "
            f"{c.get('neurons', 0):>11,} {c.get('synapses', 0):>15,} {c['seconds']:>8.1f} "
            f"{c['peak_rss_mb'] / 1024:>7.2f} {c.get('cores', '-'):>6} {c.get('chips', '-'):>5}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETWORKS), help="comma-separated subset")
    ap.add_argument("--calibration", type=int, default=4,
                    help="random inputs the QCFS thresholds are calibrated on")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "architectures.json"))
    a = ap.parse_args(argv)

    header = (f"{'network':<28} {'target':<13} {'fits':<4} {'pops':>5} {'neurons':>11} "
              f"{'synapses':>15} {'compile s':>8} {'peak GB':>7} {'cores':>6} {'chips':>5}")
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.nets.split(","):
            rows.append(measure(name, Path(tmp), a.calibration, a.timeout))
            print(_row(rows[-1]), flush=True)
    for r in rows:
        c = r["compile"]
        if not c.get("fits") and "error" not in c:
            print(f"  {r['network']}: fits no bundled profile: {'; '.join(c['findings'][:2])}")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                               "cpus": os.cpu_count(), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
