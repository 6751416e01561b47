#!/usr/bin/env bash
# The README's test command (and CI's, through .ci/run): set up if needed, then every test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
source "$LOOKAT_ROOT/scripts/env.sh"   # again: the venv (and its onnxruntime library) exists now
cd "$LOOKAT_ROOT"

echo "== cargo fmt --check, clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked --quiet -- -D warnings

echo "== cargo test (kernels, Rust host through ONNX Runtime)"
cargo test --release --workspace --locked --no-fail-fast
# The kernels again on the AVX2 path where the CPU would choose AVX-512 (same tests, other lanes).
LOOKAT_MAX_SIMD=avx2 cargo test --release --locked -p lookat-op --test reference

echo "== ARM64: cross-built plugin and tests under qemu, inside aarch64 onnxruntime"
"$LOOKAT_ROOT/scripts/arm64.sh"
"$LOOKAT_ROOT/scripts/wheel.sh"   # dist/: the x86_64 and aarch64 wheels, checked and installed by tests/python/test_wheel.py

echo "== pytest (Python onnxruntime with the plugin, fixtures)"
"$LOOKAT_VENV/bin/python" -m pytest -q tests/python
