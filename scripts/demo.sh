#!/usr/bin/env bash
# Set everything up, then run the main job on the embedded default: train the digits QCFS CNN
# (scikit-learn's load_digits, shipped with the package: no download), compile it for loihi2,
# and simulate the build on the held-out digits (reference float + fixed point, then Lava).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
py=.venv/bin/python
mt=.venv/bin/mtdeploy
ex=build/example-digits
# Retrain when the training code is newer than the saved model (or there is none).
if [[ ! -f "$ex/model.pt" || examples/common.py -nt "$ex/model.pt" || examples/digits/train.py -nt "$ex/model.pt" ]]; then
    echo "== training the digits example (QCFS CNN, mixed levels) -> $ex/model.pt"
    "$py" examples/digits/train.py --out-dir "$ex"
fi
echo "== mtdeploy compile $ex/model.pt --target loihi2"
"$mt" compile "$ex/model.pt" --target loihi2 -o build/digits
echo "== reference simulation, float (equals the QCFS ANN exactly)"
"$mt" simulate build/digits --input "$ex/digits_test.npz"
echo "== reference simulation, fixed point (Loihi's integer arithmetic)"
"$mt" simulate build/digits --input "$ex/digits_test.npz" --fixed-point -o build/digits/outputs_fixed.npy
echo "== Lava CPU simulator (Loihi2SimCfg) on 8 samples, layer by layer against the reference"
"$mt" ladder build/digits --input "$ex/digits_test.npz" -n 8
echo "== done: build/digits/report.md describes the build"
