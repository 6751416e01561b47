# Sourced by the scripts: paths every tool and test agrees on.
LOOKAT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LOOKAT_ROOT
export LOOKAT_VENV="$LOOKAT_ROOT/.venv"
# The ONNX Runtime shared library that the PyPI wheel (version pinned in requirements.txt only)
# ships inside the onnxruntime package, used by the Rust hosts (ort load-dynamic). Empty until
# scripts/setup.sh has made the venv (unset until then; the scripts source this file again after it).
ORT_DYLIB_PATH=$(ls "$LOOKAT_VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort | tail -n 1 || true)
if [ -n "$ORT_DYLIB_PATH" ]; then export ORT_DYLIB_PATH; else unset ORT_DYLIB_PATH; fi
# The plugin, built by `cargo build --release`.
export LOOKAT_OP_LIB="$LOOKAT_ROOT/target/release/liblookat_op.so"
