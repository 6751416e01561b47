#!/usr/bin/env bash
# ARM64 job (called by scripts/test.sh): cross-builds the plugin, the kernel tests and a Rust host
# for aarch64 with Debian's Rust packages, fetches the aarch64 onnxruntime wheel (the version of
# requirements.txt) from PyPI,
# and runs, under qemu-user on two emulated CPUs (cortex-a53; max, which has FP16/dotprod/i8mm):
# the kernel tests (NEON and, forced, scalar paths against the scalar/f64 references) and the
# end-to-end host test where aarch64 onnxruntime loads the plugin. No benchmarks under emulation.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LOOKAT_ROOT"

need=(gcc-aarch64-linux-gnu qemu-user rustc-web cargo-web libstd-rust-web-dev:arm64)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "arm64: installing ${missing[*]}" >&2
    dpkg --add-architecture arm64
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# rustup's proxies come first in PATH and have no aarch64 std: use Debian's toolchain.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
target=aarch64-unknown-linux-gnu
dir=target/aarch64
cargo=(/usr/bin/cargo --quiet)
"${cargo[@]}" build --release --locked -p lookat-op --target $target --target-dir $dir
kernel_tests=$("${cargo[@]}" test --release --locked -p lookat-op --target $target --target-dir $dir --no-run --message-format=json \
    | python3 -c 'import sys,json; print(*[m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and "reference" in m["target"]["name"]])')
host_test=$("${cargo[@]}" test --release --locked -p lookat-tests --target $target --target-dir $dir --no-run --message-format=json \
    | python3 -c 'import sys,json; print(*[m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "ort_host"])')

ort_version=$(sed -n 's/^onnxruntime==//p' requirements.txt)
ort_dir=$dir/ort
ort_lib=$ort_dir/libonnxruntime.so.$ort_version
if [ ! -f "$ort_lib" ]; then
    mkdir -p $ort_dir
    "$LOOKAT_VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --python-version 3.11 "onnxruntime==$ort_version" -d $ort_dir
    "$LOOKAT_VENV/bin/python" - "$ort_dir" "$ort_version" <<'PY'
import glob, sys, zipfile
d, v = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(f"{d}/onnxruntime-{v}-*aarch64.whl")[0]) as z:
    name = next(n for n in z.namelist() if n.endswith(f"capi/libonnxruntime.so.{v}"))
    open(f"{d}/libonnxruntime.so.{v}", "wb").write(z.read(name))
PY
fi

# Debian 12's qemu 7.2 passes the host's x86 /proc/cpuinfo through, and onnxruntime's cpuinfo
# crashes on it: give the emulated process an ARM one in a private mount namespace.
cpuinfo=$dir/cpuinfo
for i in 0 1; do printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n' $i; done > $cpuinfo

export ORT_DYLIB_PATH=$PWD/$ort_lib
export LOOKAT_OP_LIB=$PWD/$dir/$target/release/liblookat_op.so
# The full random grid is run natively; under emulation (~100x slower) the other kernel tests
# cover every path: NEON vs scalar on random data, references, lossless, long caches, threads.
for cpu in cortex-a53 max; do
    echo "== aarch64 ($cpu): kernel tests, NEON"
    QEMU_CPU=$cpu qemu-aarch64 $kernel_tests --skip matches_f64_reference_over_the_issue_grid --quiet
    echo "== aarch64 ($cpu): kernel tests, scalar forced"
    LOOKAT_FORCE_SCALAR=1 QEMU_CPU=$cpu qemu-aarch64 $kernel_tests --skip matches_f64_reference_over_the_issue_grid --quiet
    echo "== aarch64 ($cpu): aarch64 onnxruntime $ort_version loads the plugin"
    unshare -m sh -c "mount --bind '$PWD/$cpuinfo' /proc/cpuinfo && QEMU_CPU=$cpu exec qemu-aarch64 '$host_test' --quiet"
done
