#!/usr/bin/env bash
# The README's main command: set up if needed, then the whole pipeline — rewrite -> calibrate ->
# run the calibrated model next to the original — on the real pretrained SmolLM2-135M (Llama
# family: rotary embeddings, grouped-query attention) and on the bundled trained GPT-2 fixture.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
source "$LOOKAT_ROOT/scripts/env.sh"   # again: the venv (and its onnxruntime library) exists now
cd "$LOOKAT_ROOT"
bin=target/release
calib=(models/text/calib/prose.txt models/text/calib/code.txt models/text/calib/technical.txt)
start=$SECONDS

# --- SmolLM2-135M ------------------------------------------------------------------------------
# The recommended setting (README, docs/RESULTS.md): m = 16 codes per key and kv head, a
# query-whitened rotation before PQ, the first 4 tokens and each query's 64 most recent tokens
# scored from float16 keys, float16 values. Outputs go next to the export (same directory: the 540 MB of
# weights are referenced, not copied) and are removed at the end.
smol=models/fixtures/smollm2
model=$smol/dyn18-eager-kv.onnx
tok=$smol/tokenizer.json
rw=$smol/.demo-rewritten.onnx
cal=$smol/.demo-calibrated.onnx
trap 'rm -f "$rw" "$cal"' EXIT
echo "== SmolLM2-135M 1. lookat-rewrite: attention -> LookatAttention (m=16, sinks 4, window 64, transforms, float16 values)"
"$bin/lookat-rewrite" "$model" -o "$rw" --subspaces "${LOOKAT_SMOL_M:-16}" --sinks 4 --window 64 --transform --value-dtype f16 | grep -v "cache .* past_key_values.[1-9]\|cache .* present.[1-9]"
echo
echo "== SmolLM2-135M 2. lookat-calibrate: ${LOOKAT_SMOL_TOKENS:-16384} tokens in windows of 2048, the model's tokenizer"
"$bin/lookat-calibrate" --original "$model" --rewritten "$rw" -o "$cal" --text "${calib[@]}" \
    --tokenizer "$tok" --tokens "${LOOKAT_SMOL_TOKENS:-16384}" --window 2048 --batch 1 --seed 0 --quiet
echo "calibrated in $((SECONDS - start)) s"
echo
echo "== SmolLM2-135M 3. lookat-generate: original vs LOOKAT, greedy text, then 2048 held-out tokens per domain"
for domain in prose code technical; do
    "$bin/lookat-generate" --original "$model" --model "$cal" --tokenizer "$tok" \
        --prompt "${LOOKAT_PROMPT:-The interpreter reads the file and}" --new-tokens 32 \
        --eval-text "models/text/eval/$domain.txt" --eval-tokens 2048 --eval-chunk 256 \
        | { if [ "$domain" = prose ]; then cat; else tail -n 1; fi; }
done
echo "SmolLM2 part: $((SECONDS - start)) s"

# --- The trained GPT-2 fixture ------------------------------------------------------------------
gpt2=models/fixtures/trained/dyn18-eager-kv.onnx
out=out/demo
rm -rf "$out"   # this script's own outputs from an earlier run
mkdir -p "$out"
echo
echo "== GPT-2 fixture 1. lookat-rewrite (m=4)"
"$bin/lookat-rewrite" "$gpt2" -o "$out/rewritten.onnx" --subspaces 4 --centroids 256
echo
echo "== GPT-2 fixture 2. lookat-calibrate on 50k tokens"
"$bin/lookat-calibrate" --original "$gpt2" --rewritten "$out/rewritten.onnx" -o "$out/calibrated.onnx" \
    --text "${calib[@]}" --tokens 50000 --window 256 --seed 0 --quiet
echo
echo "== GPT-2 fixture 3. lookat-generate"
for domain in prose code technical; do
    "$bin/lookat-generate" --original "$gpt2" --model "$out/calibrated.onnx" \
        --prompt "${LOOKAT_PROMPT:-The interpreter reads the file and}" --new-tokens 24 \
        --eval-text "models/text/eval/$domain.txt" --eval-tokens 384 | { if [ "$domain" = prose ]; then cat; else tail -n 1; fi; }
done
echo
echo "demo finished in $((SECONDS - start)) s"
