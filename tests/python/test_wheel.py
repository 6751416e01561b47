"""The wheels of scripts/wheel.sh (dist/lookat-<version>-py3-none-manylinux_<glibc>_<arch>.whl).

- Both wheels: file name, tags, METADATA, WHEEL, entry points and RECORD; exactly the expected
  files, with their modes; the glibc floor of the platform tag equals the highest GLIBC_x.y that
  readelf finds in any of the ELF files; the plugin is byte-identical to the one the other jobs
  test (x86_64: target/release, which pytest loads; aarch64: the one scripts/arm64.sh ran under
  qemu inside aarch64 onnxruntime); the tools are the workspace's builds (same ELF build id).
- x86_64: installed with pip into a fresh venv that gets only onnxruntime (the version of
  requirements.txt) and its dependencies; rewrite -> calibrate -> generate on the GPT-2 fixture
  from that venv's bin/ with a clean environment, and an InferenceSession with
  lookat.session_options().
- aarch64: installed with pip for an aarch64 platform (--target, with onnxruntime's aarch64
  wheel); rewrite -> calibrate -> generate with the installed binaries under qemu-user inside the
  installed aarch64 onnxruntime and the installed plugin.

Nothing is skipped: a missing wheel, tool or file fails with what to run.
"""

import ast
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging import _manylinux, tags
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
MIN_ORT = json.loads((ROOT / "contract" / "contract.json").read_text())["min_onnxruntime"]
# The onnxruntime that the installs get (as the wheel's dependency): requirements.txt's pin, passed
# to pip as a constraint, which also pins numpy.
ORT_PIN = next(l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.startswith("onnxruntime=="))
TOOLS = ["lookat-rewrite", "lookat-calibrate", "lookat-generate", "lookat-eval", "lookat-tokenize"]
ARCHES = ["x86_64", "aarch64"]
A64 = ROOT / "target" / "aarch64" / "aarch64-unknown-linux-gnu" / "release"
BUILT = {"x86_64": ROOT / "target" / "release", "aarch64": A64}
FIXTURE = ROOT / "models" / "fixtures" / "trained" / "dyn18-eager-kv.onnx"
CALIB_TEXT = ROOT / "models" / "text" / "calib" / "prose.txt"
EVAL_TEXT = ROOT / "models" / "text" / "eval" / "prose.txt"
# Wheel size guard (compressed): the four tools ship without debug info; about 12 MB each today.
MAX_WHEEL_BYTES = 25_000_000


def wheel_path(arch):
    found = sorted((ROOT / "dist").glob(f"lookat-{VERSION}-py3-none-manylinux_*_{arch}.whl"))
    assert len(found) == 1, f"want one {arch} wheel of version {VERSION} in dist/, found {found}: run scripts/wheel.sh"
    return found[0]


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p.stdout


def need(program):
    path = shutil.which(program)
    assert path, f"{program} is not installed (scripts/setup.sh and scripts/arm64.sh install what the tests need)"
    return path


def extract(arch, tmp_path, name):
    with zipfile.ZipFile(wheel_path(arch)) as z:
        out = tmp_path / Path(name).name
        out.write_bytes(z.read(name))
    return out


def platform_tag(arch):
    (tag,) = parse_wheel_filename(wheel_path(arch).name)[3]
    return tag


def expected_files():
    di = f"lookat-{VERSION}.dist-info"
    return {
        "lookat/__init__.py": 0o644, "lookat/_cli.py": 0o644, "lookat/_version.py": 0o644, "lookat/decode.py": 0o644,
        "lookat/liblookat_op.so": 0o755, **{f"lookat/{t}": 0o755 for t in TOOLS},
        f"{di}/METADATA": 0o644, f"{di}/WHEEL": 0o644, f"{di}/entry_points.txt": 0o644, f"{di}/RECORD": 0o644,
    }


@pytest.mark.parametrize("arch", ARCHES)
def test_name_tags_metadata_and_contents(arch):
    whl = wheel_path(arch)
    name, version, build, tagset = parse_wheel_filename(whl.name)
    assert (name, str(version), build) == ("lookat", VERSION, ())
    (tag,) = tagset
    assert (tag.interpreter, tag.abi) == ("py3", "none")
    assert re.fullmatch(rf"manylinux_2_\d+_{arch}", tag.platform), tag.platform
    assert whl.stat().st_size < MAX_WHEEL_BYTES, f"{whl.name} is {whl.stat().st_size} bytes"

    di = f"lookat-{VERSION}.dist-info"
    with zipfile.ZipFile(whl) as z:
        assert z.testzip() is None
        infos = {i.filename: i for i in z.infolist()}
        assert {n: (i.external_attr >> 16) & 0o777 for n, i in infos.items()} == expected_files()
        read = lambda n: z.read(n).decode()
        meta = HeaderParser().parsestr(read(f"{di}/METADATA"))
        assert (meta["Name"], meta["Version"]) == ("lookat", VERSION)
        # The only run-time dependency: onnxruntime at the plugin's declared floor.
        assert meta.get_all("Requires-Dist") == [f"onnxruntime>={MIN_ORT}"]
        assert meta["Requires-Python"] == ">=3.8"
        wheel = HeaderParser().parsestr(read(f"{di}/WHEEL"))
        assert (wheel["Wheel-Version"], wheel["Root-Is-Purelib"]) == ("1.0", "false")
        assert wheel.get_all("Tag") == [str(tag)]
        assert read(f"{di}/entry_points.txt").split() == ["[console_scripts]"] + [
            w for t, f in zip(TOOLS, ["rewrite", "calibrate", "generate", "evaluate", "tokenize"]) for w in (t, "=", f"lookat._cli:{f}")
        ]
        assert f'__version__ = "{VERSION}"' in read("lookat/_version.py")
        assert f'MIN_ONNXRUNTIME = "{MIN_ORT}"' in read("lookat/_version.py")
        rows = list(csv.reader(io.StringIO(read(f"{di}/RECORD"))))
        assert sorted(r[0] for r in rows) == sorted(infos)
        for path, digest, size in rows:
            if path == f"{di}/RECORD":
                assert (digest, size) == ("", "")
                continue
            data = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={want}", len(data)), path
        for n in ("lookat/__init__.py", "lookat/_cli.py", "lookat/_version.py"):
            ast.parse(z.read(n), n, feature_version=(3, 8))  # Requires-Python says 3.8


@pytest.mark.parametrize("arch", ARCHES)
def test_glibc_floor_is_the_highest_glibc_symbol_version(arch, tmp_path):
    readelf = need("readelf")
    machine = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}[arch]
    highest = (0, 0)
    for name in ["liblookat_op.so", *TOOLS]:
        f = extract(arch, tmp_path, f"lookat/{name}")
        assert machine in run([readelf, "-h", f]), f"{name} in the {arch} wheel is not an {arch} ELF file"
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run([readelf, "-d", f])))
        assert needed <= {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}, needed
        versions = {(int(a), int(b)) for a, b in re.findall(r"GLIBC_(\d+)\.(\d+)", run([readelf, "-V", "-W", f]))}
        assert versions, f"{name}: no GLIBC symbol versions found"
        highest = max(highest, *versions)
    assert platform_tag(arch).platform == f"manylinux_{highest[0]}_{highest[1]}_{arch}"


@pytest.mark.parametrize("arch", ARCHES)
def test_pip_accepts_the_tag_from_the_glibc_floor_up(arch, monkeypatch):
    """packaging's manylinux tag generator (what pip runs on the device), for an `arch` machine
    with a given glibc: the wheel's tag is among its tags from the floor up, not below."""
    tag = platform_tag(arch)
    floor = tuple(map(int, re.match(r"manylinux_(\d+)_(\d+)_", tag.platform).groups()))
    assert hasattr(_manylinux, "_have_compatible_abi") and hasattr(_manylinux, "_get_glibc_version"), \
        "packaging's internals changed: adapt this test"
    if arch == "x86_64":  # for real, on this machine
        assert tag in set(tags.sys_tags())
    monkeypatch.setattr(_manylinux, "_have_compatible_abi", lambda executable, archs: True)
    for glibc, accepted in [(floor, True), ((floor[0], floor[1] + 2), True), ((floor[0], floor[1] - 1), False)]:
        monkeypatch.setattr(_manylinux, "_get_glibc_version", lambda g=glibc: g)
        assert (tag.platform in set(_manylinux.platform_tags([arch]))) == accepted, (glibc, tag)


@pytest.mark.parametrize("arch", ARCHES)
def test_plugin_is_the_tested_build_and_tools_are_the_workspace_build(arch, tmp_path):
    so = extract(arch, tmp_path, "lookat/liblookat_op.so")
    built = BUILT[arch] / "liblookat_op.so"
    assert built.is_file(), f"{built} is missing: run scripts/setup.sh and scripts/arm64.sh"
    assert hashlib.sha256(so.read_bytes()).hexdigest() == hashlib.sha256(built.read_bytes()).hexdigest(), (
        f"the {arch} wheel's plugin is not {built} (the one the tests load): run scripts/wheel.sh"
    )
    readelf = need("readelf")
    build_id = lambda f: re.search(r"Build ID: ([0-9a-f]+)", run([readelf, "-n", f])).group(1)
    for t in TOOLS:
        assert build_id(extract(arch, tmp_path, f"lookat/{t}")) == build_id(BUILT[arch] / t), (
            f"the {arch} wheel's {t} is not {BUILT[arch] / t}: run scripts/wheel.sh"
        )


def clean_env(tmp_path):
    """A bare environment (no ORT_DYLIB_PATH, LOOKAT_OP_LIB or LOOKAT_PYTHON), whose PATH starts
    with a python3 that fails: the tools must find onnxruntime through the venv by themselves."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text("#!/bin/sh\necho 'fake python3 on PATH was run' >&2\nexit 97\n")
    (fake / "python3").chmod(0o755)
    return {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}


def pip_env():
    """pip's own settings (index, certificates) from the environment; nothing of lookat's."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LOOKAT_", "ORT_", "PYTHON", "VIRTUAL_ENV"))}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv (python3.11) where pip installs the x86_64 wheel, which pulls onnxruntime."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    run([need("python3.11"), "-m", "venv", venv])
    run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "requirements.txt",
         wheel_path("x86_64")], env=pip_env())
    return venv


def test_fresh_venv_has_lookat_onnxruntime_and_its_dependencies_only(venv, tmp_path):
    run([venv / "bin" / "pip", "check"], env=clean_env(tmp_path))
    out = run([venv / "bin" / "python", "-c", """
import importlib.metadata as md, json, re
names = lambda reqs: {re.split(r"[ ;<>=!~\\[]", r)[0].lower().replace("_", "-") for r in reqs or [] if "extra ==" not in r}
want, todo = set(), ["lookat"]
while todo:
    n = todo.pop()
    if n not in want:
        want.add(n); todo += names(md.requires(n))
have = {d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}
print(json.dumps({"lookat": md.requires("lookat"), "extra": sorted(have - want - {"pip", "setuptools", "wheel"}),
                  "ort": md.version("onnxruntime")}))
"""], env=clean_env(tmp_path))
    facts = json.loads(out)
    assert facts == {"lookat": [f"onnxruntime>={MIN_ORT}"], "extra": [], "ort": ORT_PIN.split("==")[1]}


@pytest.fixture(scope="module")
def pipeline(venv, tmp_path_factory):
    """rewrite -> calibrate -> generate from the venv's bin/, in a clean environment."""
    work = tmp_path_factory.mktemp("wheel-run")
    env = clean_env(work)
    bin_ = venv / "bin"
    out = {"rewrite": run([bin_ / "lookat-rewrite", FIXTURE, "-o", "rw.onnx", "--subspaces", 4], cwd=work, env=env)}
    out["calibrate"] = run([bin_ / "lookat-calibrate", "--original", FIXTURE, "--rewritten", "rw.onnx", "-o", "cal.onnx",
                            "--text", CALIB_TEXT, "--tokens", 3000, "--window", 128], cwd=work, env=env)
    out["generate"] = run([bin_ / "lookat-generate", "--original", FIXTURE, "--model", "cal.onnx", "--new-tokens", 4,
                           "--eval-text", EVAL_TEXT, "--eval-tokens", 64], cwd=work, env=env)
    return work, env, out


def test_tools_from_the_fresh_venv_rewrite_calibrate_generate(pipeline, venv):
    work, env, out = pipeline
    assert "wrote 'rw.onnx'" in out["rewrite"] and "wrote 'cal.onnx'" in out["calibrate"]
    m = re.search(r"perplexity original ([\d.]+), lookat ([\d.]+); next-token top-1 agreement ([\d.]+)", out["generate"])
    assert m, out["generate"]
    original, lookat, agreement = map(float, m.groups())
    assert lookat < 1.05 * original and agreement >= 0.8, out["generate"]
    # Control: the packaged binary run directly (no entry point) asks PATH's python3, the fake one,
    # so the entry point is what made the run above find the venv's onnxruntime.
    site = next((venv / "lib").glob("python3*/site-packages"))
    p = subprocess.run([site / "lookat" / "lookat-generate", "--original", FIXTURE, "--model", "cal.onnx",
                        "--new-tokens", "1"], cwd=work, env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "onnxruntime" in p.stderr, p.stderr
    # --version of every tool through its entry point.
    for t in TOOLS:
        assert run([venv / "bin" / t, "--version"], env=env).split() == [t, VERSION]


def test_python_api_in_the_fresh_venv(pipeline, venv):
    work, env, _ = pipeline
    out = run([venv / "bin" / "python", "-c", """
import json, lookat, onnxruntime as ort
from lookat.decode import CacheDecoder
s = ort.InferenceSession("cal.onnx", lookat.session_options())
logits = CacheDecoder(s, max_length=8).step([1, 2, 3])
print(json.dumps([lookat.__version__, lookat.MIN_ONNXRUNTIME, lookat.get_library_path(), len(s.get_inputs()),
                  list(logits.shape)]))
"""], cwd=work, env=env)
    version, min_ort, lib, inputs, logits_shape = json.loads(out)
    assert logits_shape[:2] == [1, 3]
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (version, min_ort, lib) == (VERSION, MIN_ORT, str(site / "lookat" / "liblookat_op.so"))
    assert inputs > 1


def test_aarch64_wheel_installs_for_aarch64_and_its_tools_run_under_qemu(pipeline, tmp_path, monkeypatch):
    """pip installs the aarch64 wheel and its dependencies for an aarch64 machine (glibc 2.36: the
    tags packaging generates there); the installed binaries then run rewrite -> calibrate ->
    generate under qemu-user (cortex-a53) inside the installed aarch64 onnxruntime with the
    installed plugin. (No aarch64 Python here: the entry points, plain Python, run on x86_64.)
    The x86_64 rewrite's output and the aarch64 one are the same bytes."""
    work, _, _ = pipeline
    qemu = need("qemu-aarch64")
    floor = tuple(map(int, re.match(r"manylinux_(\d+)_(\d+)_", platform_tag("aarch64").platform).groups()))
    monkeypatch.setattr(_manylinux, "_have_compatible_abi", lambda executable, archs: True)
    monkeypatch.setattr(_manylinux, "_get_glibc_version", lambda: (floor[0], max(floor[1], 36)))
    platforms = [a for p in _manylinux.platform_tags(["aarch64"]) for a in ("--platform", p)]
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
         "--implementation", "cp", "--python-version", "3.11", *platforms, "--target", site,
         "-c", ROOT / "requirements.txt", wheel_path("aarch64")], env=pip_env())
    ort_lib = sorted((site / "onnxruntime" / "capi").glob("libonnxruntime.so*"))[-1]
    pkg = site / "lookat"
    # Debian 12's qemu passes the host's x86 /proc/cpuinfo through and onnxruntime's cpuinfo
    # crashes on it (see scripts/arm64.sh): an ARM one in a private mount namespace.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
                       "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n")

    def a64(tool, *args):
        cmd = " ".join(f"'{a}'" for a in [qemu, pkg / tool, *args])
        return run(["unshare", "-m", "sh", "-c", f"mount --bind '{cpuinfo}' /proc/cpuinfo && exec {cmd}"], cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "QEMU_CPU": "cortex-a53"})

    assert "wrote 'rw.onnx'" in a64("lookat-rewrite", FIXTURE, "-o", "rw.onnx", "--subspaces", 4)
    assert (tmp_path / "rw.onnx").read_bytes() == (work / "rw.onnx").read_bytes()
    assert "wrote 'cal.onnx'" in a64("lookat-calibrate", "--ort-lib", ort_lib, "--original", FIXTURE, "--rewritten", "rw.onnx",
                                     "-o", "cal.onnx", "--text", CALIB_TEXT, "--tokens", 512, "--window", 128)
    # No --op-lib / LOOKAT_OP_LIB: the tools take the plugin next to themselves, as installed.
    out = a64("lookat-generate", "--ort-lib", ort_lib, "--original", FIXTURE,
              "--model", "cal.onnx", "--new-tokens", 2, "--eval-text", EVAL_TEXT, "--eval-tokens", 8)
    assert re.search(r"perplexity original [\d.]+, lookat [\d.]+;", out), out
    assert a64("lookat-eval", "--version").split() == ["lookat-eval", VERSION]
