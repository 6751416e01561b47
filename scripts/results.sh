#!/usr/bin/env bash
# Regenerates docs/results/: the fidelity tables (results.md, results.json) and plots of
# docs/RESULTS.md, on the bundled trained fixture and the held-out text. Not a test (minutes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
cd "$LOOKAT_ROOT"
out=docs/results
mkdir -p "$out"
/usr/bin/time -f "lookat-eval: %e s wall" target/release/lookat-eval \
    --original models/fixtures/trained/dyn18-eager-kv.onnx \
    --calib-text models/text/calib/prose.txt models/text/calib/code.txt models/text/calib/technical.txt \
    --eval-text models/text/eval/prose.txt models/text/eval/code.txt models/text/eval/technical.txt \
    --out "$out" --calib-tokens 50000 --reservoir 16384 --iters 20 \
    --lengths 64 128 256 512 1024 --windows 2 --queries 32 \
    --e2e-subspaces 2 4 8 --e2e-tokens 384 --seed 0 --quiet
rm -f "$out"/calibrated-m*.onnx "$out"/weights.bin   # large, and made again by this script
"$LOOKAT_VENV/bin/python" scripts/plot_results.py "$out/results.json"
cat "$out/results.md"
"$LOOKAT_VENV/bin/python" scripts/results_md.py
