# Sourced by the scripts: paths every tool and test agrees on.
LOOKAT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LOOKAT_ROOT
export LOOKAT_VENV="$LOOKAT_ROOT/.venv"
# The ONNX Runtime shared library that the PyPI wheel ships, used by the Rust hosts (ort load-dynamic).
export ORT_DYLIB_PATH="$LOOKAT_VENV/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"
# The plugin, built by `cargo build --release`.
export LOOKAT_OP_LIB="$LOOKAT_ROOT/target/release/liblookat_op.so"
