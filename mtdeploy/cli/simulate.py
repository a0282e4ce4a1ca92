"""``mtdeploy simulate``: run a build on the samples of a file; print, and save the outputs."""
from __future__ import annotations

import sys

import numpy as np

from mtdeploy.api import simulate_build
from mtdeploy.io import check_output_files, load_samples, save_npy


def run(a) -> int:
    if a.output:   # before the run: a long simulation must not end in an unusable -o
        check_output_files([a.output], protect=[a.input, a.build])
    x, y = load_samples(a.input)
    out, result = simulate_build(a.build, x, backend=a.backend, fixed_point=a.fixed_point,
                                 seed=a.seed, progress=sys.stderr.isatty(), labels=y)
    mode = "fixed-point" if a.fixed_point else "float"
    print(f"simulated {len(x)} samples ({a.backend}, {mode})")
    if result is not None:
        print(f"  SynOps per sample: {result.total_synops / max(len(x), 1):.1f}")
        if result.input_clipped:
            print(f"  warning: {result.input_clipped} input values saturated the fixed-point "
                  "range; recompile with a larger --input-max", file=sys.stderr)
    if y is not None:
        print(f"  accuracy: {float(np.mean(out.argmax(1) == y)):.4f}")
    if a.output:
        save_npy(a.output, out)
        print(f"  outputs -> {a.output}")
    return 0
