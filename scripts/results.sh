#!/usr/bin/env bash
# Regenerates docs/RESULTS.md, docs/results/results.json and the plots: LOOKAT end to end on
# SmolLM2-135M and the trained GPT-2 fixture, every quality lever and the scalar INT8/INT4
# baselines through the same op, end to end and at the level of attention (scripts/results.py). A
# benchmark, not a test: under 30 minutes on the project's 2-core machine. --calib-sweep instead
# measures calibration volume (16k/64k/256k tokens) and window length (about 20 minutes) into
# docs/results/calib_sweep.json; the page shows both files.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
source "$LOOKAT_ROOT/scripts/env.sh"   # again: the venv (and its onnxruntime library) exists now
cd "$LOOKAT_ROOT"
"$LOOKAT_VENV/bin/python" scripts/results.py "$@"
"$LOOKAT_VENV/bin/python" scripts/results_md.py docs/results/results.json > /dev/null
echo "wrote docs/RESULTS.md"
