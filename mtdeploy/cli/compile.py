"""``mtdeploy compile``: build a model for a target and say what was built."""
from __future__ import annotations

import sys

from mtdeploy.api import Build, compile_model
from mtdeploy.cli.values import timesteps


def run(a) -> int:
    build = compile_model(a.model, input_shape=a.input_shape, target=a.target, out_dir=a.output,
                          timesteps=timesteps(a.timesteps), alignment=a.alignment, neuron=a.neuron,
                          v_init=a.v_init, seed=a.seed, input_max=a.input_max,
                          weight_bits=a.weight_bits, trust_pickle=a.trust_pickle, force=a.force,
                          calib=a.calib, per_layer_scaling=a.per_layer_scaling,
                          **({} if a.input_bits is None else {"input_bits": a.input_bits}))
    _print_build(build, a.target)
    for row in [build.report["input"], *build.report.get("quantization", [])]:
        if "warning" in row:
            print(f"mtdeploy: warning: {row['warning']}", file=sys.stderr)
    return 0


def _print_build(build: Build, target: str) -> None:
    lat = build.report["latency"]
    print(f"compiled {build.graph.name} for {target} -> {build.out_dir}/")
    for row in build.report["layers"]:
        print(f"  {row['layer']:<28} {row['neuron']:<4} T={row['T']:<3} "
              f"neurons={row['neurons']:<6} window={row['window']}")
    print(f"  mean T {lat['mean_T']:.2f}, sum T {lat['sum_T']}, sequential latency "
          f"{lat['sequential_steps']} steps, pipelined interval "
          f"{lat['pipeline_interval_steps']} steps")
    if build.check is not None:       # the figure `mtdeploy check` prints for the same network
        totals = build.check.totals
        print(f"  {totals['cores']} cores on {totals['chips']} chip(s) of {target}")
    inp = build.report["input"]
    print(f"  input range |x| <= {inp['input_max']:.4g} ({inp['input_max_source']})")
    print(f"  files: {', '.join(build.files)}")
