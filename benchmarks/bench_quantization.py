"""Fixed-point fidelity benchmark: how much of a network survives mtdeploy's quantization.

Two workloads, each against its float ANN (the float SNN equals the ANN exactly with
avg-repeat, so every difference here is quantization):
* the ImageNet-layout QCFS ResNet-18 at 32x32 (random He weights, randomised BatchNorm
  statistics, QCFS thresholds calibrated to the 99.9th percentile of their inputs): the share
  of each layer's non-zero weights kept, and the argmax agreement of fixed point with the ANN
  on random inputs;
* random QCFS CNNs with mixed levels in {1..16} (mtdeploy.testing.random_cnn): argmax agreement.

    .venv/bin/python benchmarks/bench_quantization.py [--samples 200] [--cnns 20]

Prints a table and writes benchmarks/results/quantization.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from architectures import calibrate, randomize_bn, resnet18  # noqa: E402

from mtdeploy.frontends import graph_from_module  # noqa: E402
from mtdeploy.passes import ConvertOptions, convert, quantize  # noqa: E402
from mtdeploy.passes.quantize import quantization_report  # noqa: E402
from mtdeploy.sim.ann import ann_forward  # noqa: E402
from mtdeploy.sim.reference import simulate  # noqa: E402
from mtdeploy.testing import random_cnn  # noqa: E402


def agreement(snn, x: np.ndarray) -> dict:
    ann = ann_forward(snn, x).numpy()
    fixed = simulate(snn, x, mode="fixed", record=False).output
    return {"argmax_agreement": float(np.mean(ann.argmax(1) == fixed.argmax(1))),
            "max_abs_error": float(np.abs(fixed - ann).max()),
            "logit_std_over_samples": float(ann.std(0).mean())}


def resnet18_case(samples: int, weight_bits: int) -> dict:
    torch.manual_seed(0)
    model = randomize_bn(resnet18(imagenet=True), seed=1)
    x = torch.rand(samples, 3, 32, 32)
    calibrate(model, x[:64])
    t0 = time.perf_counter()
    snn = quantize(convert(graph_from_module(model, (3, 32, 32)), ConvertOptions(input_max=1.0)),
                   weight_bits=weight_bits)
    seconds = time.perf_counter() - t0
    report = quantization_report(snn)
    worst = min(report, key=lambda r: r["nonzero_kept"])
    return {"case": f"resnet18-imagenet-32px w{weight_bits}", "compile_seconds": seconds,
            "layers": len(report), "min_nonzero_kept": worst["nonzero_kept"],
            "worst_layer": worst["layer"],
            "layers_below_95pct": sum(r["nonzero_kept"] < 0.95 for r in report),
            **agreement(snn, x.numpy())}


def random_cnn_case(n: int, samples: int) -> dict:
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(n):
        graph = random_cnn(rng, size=8, channels=(6, 8), classes=10,
                           levels=[int(v) for v in rng.integers(1, 17, 2)])
        snn = quantize(convert(graph, ConvertOptions(input_max=1.5)))
        x = rng.uniform(-0.2, 1.4, (samples, *graph.input.shape))
        scores.append(agreement(snn, x)["argmax_agreement"])
    return {"case": f"random mixed-level CNNs (n={n})", "argmax_agreement": float(np.mean(scores)),
            "argmax_agreement_min": float(np.min(scores))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--cnns", type=int, default=20)
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "quantization.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = [resnet18_case(a.samples, 8), resnet18_case(a.samples, 16),
            random_cnn_case(a.cnns, a.samples)]
    for r in rows:
        print(f"{r['case']:<34} argmax agreement {r['argmax_agreement']:.3f}"
              + (f"  min kept {100 * r['min_nonzero_kept']:.1f}% ({r['worst_layer']}), "
                 f"{r['layers_below_95pct']} layers < 95%, logit std {r['logit_std_over_samples']:.3g}"
                 if "min_nonzero_kept" in r else f"  (worst network {r['argmax_agreement_min']:.3f})"))
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
