#!/usr/bin/env bash
# Wheel job (called by scripts/test.sh before pytest, which checks and installs the wheels in
# tests/python/test_wheel.py): writes dist/lookat-<version>-py3-none-manylinux_<glibc>_x86_64.whl
# and ..._aarch64.whl with python/make_wheel.py. Each holds the plugin, the four tools (debug info
# stripped) and the Python package `lookat`.
# - x86_64: the workspace release build, by setup.sh's own command (a no-op when it is current).
# - aarch64: the plugin is the one scripts/arm64.sh built and tested under qemu inside aarch64
#   onnxruntime (taken as it is, never rebuilt here); the tools are cross-built like arm64.sh
#   does, in a separate cargo invocation (it does not touch the plugin's file).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LOOKAT_ROOT"
fail() { echo "wheel: $*" >&2; exit 1; }

[ -x "$LOOKAT_VENV/bin/python" ] || fail "no $LOOKAT_VENV: run scripts/setup.sh first"
tools=(lookat-rewrite lookat-calibrate lookat-generate lookat-eval lookat-tokenize)

cargo build --release --workspace --locked --quiet

for p in gcc-aarch64-linux-gnu rustc-web cargo-web libstd-rust-web-dev:arm64; do
    dpkg -s "$p" >/dev/null 2>&1 || fail "Debian package $p is missing: run scripts/arm64.sh first (it installs the aarch64 toolchain, builds and tests the plugin)"
done
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
target=aarch64-unknown-linux-gnu
a64=target/aarch64/$target/release
/usr/bin/cargo build --quiet --release --locked --target $target --target-dir target/aarch64 \
    -p lookat-rewrite -p lookat-calibrate $(printf -- '--bin %s ' "${tools[@]}")
# The aarch64 plugin must be current: newer than every source file in its cargo dep-info.
[ -f $a64/liblookat_op.so ] || fail "$a64/liblookat_op.so is missing: run scripts/arm64.sh first"
python3 - $a64/liblookat_op.d $a64/liblookat_op.so <<'PY' || fail "the aarch64 plugin is older than its sources: run scripts/arm64.sh (it rebuilds and tests it), then this"
import os, sys
deps = open(sys.argv[1]).read().split(":", 1)[1].replace("\\\n", " ").split()
built = os.path.getmtime(sys.argv[2])
newer = [d for d in deps if not os.path.exists(d) or os.path.getmtime(d) > built]
if newer:
    sys.exit("wheel: newer than the aarch64 plugin: " + " ".join(newer))
PY

rm -f dist/lookat-*-py3-none-*.whl
mkdir -p dist
printf '*\n' > dist/.gitignore   # build output, like target/
for arch in x86_64 aarch64; do
    case $arch in
        x86_64)  bin=target/release strip=strip ;;
        aarch64) bin=$a64 strip=aarch64-linux-gnu-strip ;;
    esac
    stage=target/wheel/$arch
    rm -rf "$stage" && mkdir -p "$stage"
    for t in "${tools[@]}"; do "$strip" --strip-debug -o "$stage/$t" "$bin/$t"; done
    echo "== wheel ($arch): bytes installed, bytes in the wheel, path"
    "$LOOKAT_VENV/bin/python" python/make_wheel.py --root . --arch $arch \
        --plugin "$bin/liblookat_op.so" --tools-dir "$stage" --out-dir dist
done
