#!/usr/bin/env bash
# The README's main command: set up if needed, then the whole pipeline on the bundled trained
# GPT-2 fixture: rewrite -> calibrate -> run the calibrated model next to the original.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
cd "$LOOKAT_ROOT"

model=models/fixtures/trained/dyn18-eager-kv.onnx
out=out/demo
rm -rf "$out"   # this script's own outputs from an earlier run
mkdir -p "$out"
bin=target/release

echo "== 1. lookat-rewrite: attention -> LookatAttention, key cache -> uint8 codes (m=4)"
"$bin/lookat-rewrite" "$model" -o "$out/rewritten.onnx" --subspaces 4 --centroids 256

echo
echo "== 2. lookat-calibrate: codebooks from the original's keys on 50k tokens of calibration text"
"$bin/lookat-calibrate" --original "$model" --rewritten "$out/rewritten.onnx" -o "$out/calibrated.onnx" \
    --text models/text/calib/prose.txt models/text/calib/code.txt models/text/calib/technical.txt \
    --tokens 50000 --window 256 --seed 0

echo
echo "== 3. lookat-generate: original vs calibrated, greedy text and held-out decoding (cache path)"
for domain in prose code technical; do
    "$bin/lookat-generate" --original "$model" --model "$out/calibrated.onnx" \
        --prompt "${LOOKAT_PROMPT:-The interpreter reads the file and}" --new-tokens 24 \
        --eval-text "models/text/eval/$domain.txt" --eval-tokens 384 | { if [ "$domain" = prose ]; then cat; else tail -n 1; fi; }
done
