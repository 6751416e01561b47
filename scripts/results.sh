#!/usr/bin/env bash
# Regenerates docs/RESULTS.md, docs/results/results.json and the plots: LOOKAT end to end on
# SmolLM2-135M and the trained GPT-2 fixture, every quality lever and the scalar INT8/INT4
# baselines through the same op (scripts/results.py). A benchmark, not a test: about 30 minutes on
# the project's 2-core machine; --quick skips the 64k-token calibration run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
source "$LOOKAT_ROOT/scripts/env.sh"   # again: the venv (and its onnxruntime library) exists now
cd "$LOOKAT_ROOT"
"$LOOKAT_VENV/bin/python" scripts/results.py "$@"
"$LOOKAT_VENV/bin/python" scripts/results_md.py docs/results/results.json > /dev/null
echo "wrote docs/RESULTS.md"
