#!/usr/bin/env python3
"""Writes one lookat wheel (scripts/wheel.sh runs it once per architecture).

A wheel is a zip: the package files, then `<name>-<version>.dist-info/` with METADATA, WHEEL,
entry_points.txt and RECORD (sha256 of every file). This writes it with zipfile, so no build
backend is downloaded. The platform tag is derived, not chosen: every ELF file must be built for
the architecture and link only libraries that manylinux allows, and the highest GLIBC_x.y symbol
version any of them needs gives `manylinux_x_y_<arch>`. The output is byte-for-byte reproducible.

usage: make_wheel.py --root REPO --arch x86_64|aarch64 --plugin liblookat_op.so
                     --tools-dir DIR (lookat-rewrite, ... already stripped) --out-dir dist
"""

import argparse
import ast
import base64
import hashlib
import json
import re
import struct
import sys
import tomllib
import zipfile
from pathlib import Path

E_MACHINE = {"x86_64": 62, "aarch64": 183}
# The libraries a manylinux wheel may link without shipping them (PEP 600 / auditwheel policy,
# the subset that matters here).
MANYLINUX_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libgcc_s.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
}
REQUIRES_PYTHON = ">=3.8"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def elf_facts(path):
    """(e_machine, DT_NEEDED names, GLIBC_x.y versions needed) of a 64-bit little-endian ELF."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"make_wheel: {path} is not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 18)[0]
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def cstr(table, off):
        start = sections[table][4] + off
        return data[start:data.index(b"\0", start)].decode()

    needed, glibc = set(), set()
    for _name, typ, _flags, _addr, off, size, link, info, _align, entsize in sections:
        if typ == 6:  # SHT_DYNAMIC
            for i in range(size // entsize):
                tag, val = struct.unpack_from("<qQ", data, off + i * entsize)
                if tag == 1:  # DT_NEEDED
                    needed.add(cstr(link, val))
        elif typ == 0x6FFFFFFE:  # SHT_GNU_verneed: Verneed entries, each with Vernaux entries
            pos = off
            for _ in range(info):
                _ver, cnt, _file, aux, nxt = struct.unpack_from("<HHIII", data, pos)
                apos = pos + aux
                for _ in range(cnt):
                    _hash, _fl, _other, name, anext = struct.unpack_from("<IHHII", data, apos)
                    m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", cstr(link, name))
                    if m:
                        glibc.add((int(m[1]), int(m[2])))
                    apos += anext
                pos += nxt
    return machine, needed, glibc


def record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--arch", choices=sorted(E_MACHINE), required=True)
    ap.add_argument("--plugin", type=Path, required=True)
    ap.add_argument("--tools-dir", type=Path, required=True)
    ap.add_argument("--out-dir", type=Path, required=True)
    a = ap.parse_args()
    here = Path(__file__).resolve().parent

    version = tomllib.loads((a.root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise SystemExit(f"make_wheel: workspace version {version!r} is not a plain PEP 440 release")
    min_ort = json.loads((a.root / "contract/contract.json").read_text())["min_onnxruntime"]
    cli = ast.parse((here / "lookat/_cli.py").read_text())
    entry_points = next(ast.literal_eval(n.value) for n in cli.body if isinstance(n, ast.Assign)
                        and [t.id for t in n.targets] == ["ENTRY_POINTS"])

    # (path in the wheel, bytes, executable)
    files = [(f"lookat/{n}", (here / "lookat" / n).read_bytes(), False) for n in ("__init__.py", "_cli.py", "decode.py")]
    files.append(("lookat/_version.py", (f'__version__ = "{version}"\n'
                                         f'# The oldest onnxruntime the plugin supports (contract/contract.json).\n'
                                         f'MIN_ONNXRUNTIME = "{min_ort}"\n').encode(), False))
    elves = [("lookat/liblookat_op.so", a.plugin)] + [(f"lookat/{t}", a.tools_dir / t) for t in entry_points]
    floor = {"x86_64": (2, 5), "aarch64": (2, 17)}[a.arch]  # the oldest manylinux_x_y per architecture
    for name, src in elves:
        if not src.is_file():
            raise SystemExit(f"make_wheel: {src} is missing")
        machine, needed, glibc = elf_facts(src)
        if machine != E_MACHINE[a.arch]:
            raise SystemExit(f"make_wheel: {src} is not an {a.arch} ELF file (e_machine {machine})")
        if needed - MANYLINUX_LIBS:
            raise SystemExit(f"make_wheel: {src} links {sorted(needed - MANYLINUX_LIBS)}, not allowed in a manylinux wheel")
        floor = max([floor, *glibc])
        files.append((name, src.read_bytes(), True))

    tag = f"py3-none-manylinux_{floor[0]}_{floor[1]}_{a.arch}"
    dist_info = f"lookat-{version}.dist-info"
    metadata = "\n".join([
        "Metadata-Version: 2.1",
        "Name: lookat",
        f"Version: {version}",
        "Summary: Attention over a product-quantized key cache: ONNX Runtime custom-op library and tools",
        "License: MIT OR Apache-2.0",
        "Classifier: Operating System :: POSIX :: Linux",
        "Classifier: Programming Language :: Python :: 3",
        f"Requires-Python: {REQUIRES_PYTHON}",
        f"Requires-Dist: onnxruntime>={min_ort}",
        "Description-Content-Type: text/markdown",
        "", (here / "README.md").read_text(),
    ])
    wheel = f"Wheel-Version: 1.0\nGenerator: lookat python/make_wheel.py\nRoot-Is-Purelib: false\nTag: {tag}\n"
    eps = "[console_scripts]\n" + "".join(f"{t} = lookat._cli:{f}\n" for t, f in entry_points.items())
    files += [(f"{dist_info}/METADATA", metadata.encode(), False),
              (f"{dist_info}/WHEEL", wheel.encode(), False),
              (f"{dist_info}/entry_points.txt", eps.encode(), False)]
    record = "".join(f"{n},{record_hash(d)},{len(d)}\n" for n, d, _ in files) + f"{dist_info}/RECORD,,\n"
    files.append((f"{dist_info}/RECORD", record.encode(), False))

    a.out_dir.mkdir(parents=True, exist_ok=True)
    out = a.out_dir / f"lookat-{version}-{tag}.whl"
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for name, data, exe in files:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = (0o100755 if exe else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data, compresslevel=6)
    tmp.replace(out)

    with zipfile.ZipFile(out) as z:
        for i in z.infolist():
            print(f"  {i.file_size:>10}  {i.compress_size:>10}  {i.filename}")
    print(f"  {sum(len(d) for _, d, _ in files):>10}  {out.stat().st_size:>10}  {out.name} "
          f"(bytes: installed, in the wheel; glibc floor {floor[0]}.{floor[1]})")
    print(out)


if __name__ == "__main__":
    sys.exit(main())
