#!/usr/bin/env bash
# Export a local GPT-2 checkpoint with optimum's exporter (offline), in its own venv: optimum-onnx pins
# transformers<4.58, which would downgrade the models/.venv's transformers 5.x.
#   bash models/optimum_export.sh CHECKPOINT_DIR OUT_DIR [TASK]      (TASK: text-generation-with-past)
# The venv is models/work/optimum-venv (created here; ~6 GB with torch's CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")"
CKPT=$1
OUT=$2
TASK=${3:-text-generation-with-past}
VENV=work/optimum-venv
if [ ! -x $VENV/bin/optimum-cli ]; then
    python3.11 -m venv $VENV
    $VENV/bin/pip install -q optimum-onnx onnxruntime==1.31.1
fi
HF_HUB_OFFLINE=1 $VENV/bin/optimum-cli export onnx --model "$CKPT" --task "$TASK" --opset 18 "$OUT"
