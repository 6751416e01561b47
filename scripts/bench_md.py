"""Writes docs/BENCHMARKS.md from the JSON of one run of each benchmark command (not a test):

    .venv/bin/python scripts/bench.py --json B.json
    .venv/bin/python scripts/bench_e2e.py --json E.json
    .venv/bin/python scripts/value_fidelity.py --json V.json
    .venv/bin/python scripts/bench_md.py --bench B.json --e2e E.json --fidelity V.json \
        --commit C --seconds S1,S2,S3 [--out docs/BENCHMARKS.md]

Every figure on the page comes from those files, except the ARM64 cost model, which is computed
here from the stated assumptions and labelled as a model."""

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
D = 64


def fmt_ratio(x):
    return f"{x:.2f}×"


def rows(results, **match):
    return [r for r in results if all(r[k] == v for k, v in match.items())]


def one(results, **match):
    found = rows(results, **match)
    return found[0] if found else None


def micro_tables(bench):
    out = []
    res = bench["results"]
    for shape, title in (("gpt2", "GPT-2 shape: 12 heads × 64"), ("smollm2", "SmolLM2 shape: 9 query / 3 kv heads × 64")):
        for mode in ("decode", "prefill"):
            sel = rows(res, shape=shape, mode=mode)
            if not sel:
                continue
            out.append(f"\n### {title}, {mode}\n")
            keys = sorted({(r["batch"], r["tokens"]) for r in sel})
            variants = list(dict.fromkeys(r["variant"] for r in sel))
            head = "| variant | B/token |" + "".join(f" B={b} T={t} |" for b, t in keys)
            out.append(head)
            out.append("|---|---:|" + "---:|" * len(keys))
            for v in variants:
                cells = []
                per_token = None
                for b, t in keys:
                    r = one(sel, variant=v, batch=b, tokens=t)
                    if r is None:
                        cells.append(" – |")
                        continue
                    per_token = r["cache_bytes_per_token"]
                    frac = "" if mode == "prefill" else f", bw {r['bandwidth_fraction']:.2f}"
                    cells.append(f" {r['ms']:.3f} ms ({fmt_ratio(r['speedup_vs_mha'])}{frac}) |")
                out.append(f"| {v} | {per_token:.0f} |" + "".join(cells))
    return "\n".join(out)


def e2e_table(e2e):
    out = []
    for model in dict.fromkeys(r["model"] for r in e2e["results"]):
        sel = rows(e2e["results"], model=model)
        out.append(f"\n### {model}\n")
        out.append("| T | B | variant | ms/step | tokens/s | vs original | cache MiB | peak RSS MiB |")
        out.append("|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in sel:
            out.append(f"| {r['context']} | {r['batch']} | {r['variant']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:.1f} | "
                       f"{fmt_ratio(r['speedup_vs_original'])} | {r['cache_bytes'] / 2**20:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    return "\n".join(out)


def fidelity_table(vf):
    out = ["| domain | values | perplexity (original) | KL vs original | top-1 vs original | KL vs float32 values | top-1 vs float32 values |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in vf["results"]:
        for label, m in r["models"].items():
            out.append(f"| {r['domain']} | {label} | {m['ppl']:.3f} ({r['ppl_original']:.3f}) | {m['kl_vs_original']:.5f} | "
                       f"{m['top1_vs_original']:.4f} | {m['kl_vs_float32_values']:.6f} | {m['top1_vs_float32_values']:.4f} |")
    return "\n".join(out)


def cost_model():
    """Bytes and operations per cached token, kv head and decode step, and a predicted time on
    one Cortex-A76-class core (assumptions in the text)."""
    bw = 8e9            # B/s one core streams from LPDDR4X
    hz = 2.4e9          # clock
    fma_per_cycle = 8   # 2 × 128-bit NEON FMA pipes: 8 float32 multiply-adds per cycle
    lookup_per_cycle = 2  # scalar table loads + adds (2 load ports)
    widen_per_cycle = 16  # int8 → float32 conversions (sxtl, sxtl, scvtf on 2 pipes: 16 lanes/cycle)
    G = 3               # query heads per kv head (SmolLM2)
    variants = [
        # name, cache bytes/token/kv head, bytes moved per token (copy: read + write), MACs, lookups, widen
        ("MultiHeadAttention fp32 (kv repeated ×3), copying", G * 2 * D * 4, G * 2 * 2 * D * 4, G * 2 * D, 0, 0),
        ("GroupQueryAttention fp32, copying", 2 * D * 4, 2 * 2 * D * 4, G * 2 * D, 0, 0),
        ("GroupQueryAttention fp32, shared", 2 * D * 4, 2 * D * 4, G * 2 * D, 0, 0),
        ("GroupQueryAttention int4, copying", D, 2 * D, G * 2 * D, 0, 2 * D),
        ("GroupQueryAttention int4, shared", D, D, G * 2 * D, 0, 2 * D),
        ("LOOKAT m=4 float16 values, shared", 4 + 2 * D, 4 + 2 * D, G * D, G * 4, D),
        ("LOOKAT m=4 int8 rows, shared", 4 + D + 4, 4 + D + 4, G * D, G * 4, D),
    ]
    out = ["| variant | cache B/token | bytes moved | MACs | table lookups | conversions | predicted ns/token | vs MHA |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = None
    for name, cache, moved, macs, lookups, widen in variants:
        t_mem = moved / bw
        t_ops = (macs / fma_per_cycle + lookups / lookup_per_cycle + widen / widen_per_cycle) / hz
        t = max(t_mem, t_ops)
        base = base or t
        out.append(f"| {name} | {cache} | {moved} | {macs} | {lookups} | {widen} | {t * 1e9:.1f} "
                   f"({'memory' if t_mem >= t_ops else 'compute'}) | {base / t:.1f}× |")
    return "\n".join(out)


def machine_line(m):
    """`cpu` and the largest cache of a run's machine record, for sections run apart from bench.py."""
    caches = m.get("caches", {})
    l3 = [f"{k} {v}" for k, v in caches.items() if k.startswith("L3")]
    return m["cpu"] + (f" ({l3[0]})" if l3 else "")


def ort_versions_section(runs):
    """GroupQueryAttention (and MultiHeadAttention) decode at T = 4096, B = 1 in two onnxruntime
    versions, from `bench.py --quick` run back to back."""
    versions = [r["machine"]["onnxruntime"] for r in runs]
    out = [f"\n## onnxruntime {versions[0]} against {versions[1]}\n",
           f"`bench.py --quick --json` in a venv with each version, back to back on {machine_line(runs[0]['machine'])} (copy bandwidth "
           + ", ".join("%.1f" % r["machine"]["copy_bandwidth_gbs"] for r in runs) + " GB/s): decode, T = 4096, B = 1, ms.\n",
           "| shape | variant | " + " | ".join(versions) + " |", "|---|---|" + "---:|" * len(runs)]
    for shape in ("gpt2", "smollm2"):
        names = [r["variant"] for r in rows(runs[0]["results"], shape=shape, mode="decode")
                 if r["variant"].startswith(("gqa", "mha"))]
        for v in names:
            cells = [one(r["results"], shape=shape, mode="decode", variant=v) for r in runs]
            out.append(f"| {shape} | {v} | " + " | ".join(f"{c['ms']:.3f}" if c else "–" for c in cells) + " |")
    return "\n".join(out) + "\n"


def phases_section(runs):
    """Burst medians of one cell over many rounds, threads unpinned and pinned (bench_phases.py)."""
    unpinned, pinned = sorted(runs, key=lambda r: r["pinned"])
    assert not unpinned["pinned"] and pinned["pinned"], "one run with --no-pin, one without"
    first = unpinned["summary"][0]["variant"]
    machine = machine_line(pinned)

    def cells(summary_row):
        ms, ratio = summary_row["ms_p10_p50_p90"], summary_row["ratio_p10_p50_p90"]
        return f"{'/'.join(f'{x:.3f}' for x in ms)} | {'/'.join(f'{x:.2f}' for x in ratio)}×"

    lines = [f"| {a['variant']} | {cells(a)} | {cells(b)} |" for a, b in zip(unpinned["summary"], pinned["summary"])]
    return f"""
## Thread placement: why bench.py pins threads

`scripts/bench_phases.py [--no-pin] --rounds {pinned['rounds']}` times one cell ({pinned['shape']} shape, decode,
T = {pinned['tokens']}, B = {pinned['batch']}) the way bench.py times a round, burst after burst, the variants
taking turns; per variant the 10th/50th/90th percentile of the burst medians (ms) and of the
ratio to {first} in the same round; on {machine}, back to back. Each variant has its own
session, so one process holds many thread pools. On an AMD EPYC VM of the same kind, unpinned,
Linux left a pool's woken worker on the caller's CPU for seconds at a time and the variants that
use both threads ran ~1.7× slower in such phases (bench_phases.py there, 2026-12-04, lookat m=2
int8 shared p50: 0.151 ms unpinned, 0.090 ms pinned); the table shows how much of that this
machine sees. bench.py therefore pins every session's workers to CPUs
1 … N−1 and the calling thread to CPU 0 (`pinned_session`).

| variant | unpinned: ms p10/p50/p90 | ratio | pinned: ms p10/p50/p90 | ratio |
|---|---:|---:|---:|---:|
{chr(10).join(lines)}
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True)
    ap.add_argument("--e2e", required=True)
    ap.add_argument("--fidelity", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--seconds", required=True, help="wall seconds of the three runs, comma separated")
    ap.add_argument("--ort-versions", help="two `bench.py --quick --json` files from two onnxruntime versions, comma separated")
    ap.add_argument("--phases", help="two `bench_phases.py --json` files, run with --no-pin and without, comma separated")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    bench, e2e, vf = (json.load(open(p)) for p in (args.bench, args.e2e, args.fidelity))
    secs = [float(s) for s in args.seconds.split(",")]
    mach = bench["machine"]
    res = bench["results"]

    def best(shape, mode, b, t, prefix, shared=None):
        cands = [r for r in rows(res, shape=shape, mode=mode, batch=b, tokens=t) if r["variant"].startswith(prefix)
                 and (shared is None or r["variant"].endswith("shared") == shared)]
        return min(cands, key=lambda r: r["ms"]) if cands else None

    goals, prefill_ratio, over_mha, lead = [], {}, {}, {}
    for shape in ("gpt2", "smollm2"):
        mha = [r for r in rows(res, shape=shape, mode="decode", batch=1, tokens=4096) if r["variant"].startswith("mha")][0]
        int4 = best(shape, "decode", 1, 4096, "gqa int4")
        lk = best(shape, "decode", 1, 4096, "lookat")
        over_mha[shape], lead[shape] = mha["ms"] / lk["ms"], int4["ms"] / lk["ms"]
        goals.append(f"| T = 4096, B = 1 decode, {shape} shape: ≥ 10× MultiHeadAttention fp32 | {lk['variant']}: "
                     f"{fmt_ratio(mha['ms'] / lk['ms'])} | {'met' if mha['ms'] / lk['ms'] >= 10 else 'missed'} |")
        goals.append(f"| same: ≥ 3× GroupQueryAttention int4 (its best: {int4['variant']}) | "
                     f"{fmt_ratio(int4['ms'] / lk['ms'])} | {'met' if int4['ms'] / lk['ms'] >= 3 else 'missed'} |")
        fr = [r for r in rows(res, shape=shape, mode="decode") if r["tokens"] >= 4096 and r["variant"].startswith("lookat")]
        top = max(fr, key=lambda r: r["bandwidth_fraction"])
        goals.append(f"| ≥ 0.8 of the copy bandwidth at T ≥ 4096, {shape} shape | best {top['variant']} at B={top['batch']} "
                     f"T={top['tokens']}: {top['bandwidth_fraction']:.2f} | {'met' if top['bandwidth_fraction'] >= 0.8 else 'missed'} |")
        for t in (256, 1024):
            ort_rows = [r for r in rows(res, shape=shape, mode="prefill", batch=1, tokens=t) if not r["variant"].startswith("lookat")]
            if not ort_rows:
                continue
            fastest = min(ort_rows, key=lambda r: r["ms"])
            lk = best(shape, "prefill", 1, t, "lookat")
            prefill_ratio[shape, t] = fastest["ms"] / lk["ms"]
            goals.append(f"| prefill T = {t}, {shape} shape: ≥ 1.0× the fastest onnxruntime path ({fastest['variant']}) | "
                         f"{lk['variant']}: {fmt_ratio(fastest['ms'] / lk['ms'])} | {'met' if fastest['ms'] / lk['ms'] >= 1 else 'missed'} |")
    e2 = [r for r in e2e["results"] if r["model"] == "smollm2" and r["context"] == 2048 and r["batch"] == 4]
    if e2:
        orig = [r for r in e2 if r["variant"] == "original"][0]
        for r in e2:
            if r["variant"] == "original":
                continue
            ratio, smaller = r["speedup_vs_original"], orig["cache_bytes"] / r["cache_bytes"]
            goals.append(f"| SmolLM2 T = 2048, B = 4: ≥ 1.5× tokens/s with a cache ≥ 4× smaller — {r['variant']} | "
                         f"{fmt_ratio(ratio)} tokens/s, cache {smaller:.2f}× smaller | "
                         f"{'met' if ratio >= 1.5 and smaller >= 4 else 'missed'} |")

    def cell(shape, b, t, variant):
        return one(res, shape=shape, mode="decode", batch=b, tokens=t, variant=variant)

    mha_long = cell("gpt2", 4, 16384, "mha fp32")
    lk_long = best("gpt2", "decode", 4, 16384, "lookat", shared=True)
    gqa_long = best("gpt2", "decode", 4, 16384, "gqa")

    def verdict(ratio, goal):
        return f"meeting the {goal}× goal" if ratio >= goal else f"short of the {goal}× goal"

    prefill_text = (
        "prefill, the best LOOKAT variant against onnxruntime's fastest path for the shape: "
        + ", ".join(f"{r:.2f}× at T = {t} ({'GPT-2' if sh == 'gpt2' else 'SmolLM2'})" for (sh, t), r in sorted(prefill_ratio.items()))
        + ".\nEncoding a key costs K·D multiply-adds, as much as exact attention over 256 tokens, and\n"
        "GPT-2's shape encodes a key per query head (SmolLM2's, one per three)"
    )
    share_gain = [cell(r["shape"], r["batch"], r["tokens"], "gqa fp32")["ms"] / r["ms"]
                  for r in rows(res, mode="decode", variant="gqa fp32 shared")]
    e2e_long = {r["variant"]: r for r in e2e["results"] if r["model"] == "smollm2" and r["context"] == 8000 and r["batch"] == 4}
    reading = ""
    if e2e_long:
        o, q = e2e_long["original"], e2e_long["lookat int8 shared"]
        reading = (
            f"In short: decode is where LOOKAT pays, and more so the longer the context. At T = 16384,\n"
            f"B = 4 (GPT-2's shape) the fastest shared LOOKAT variant ({lk_long['variant']}) takes {lk_long['ms']:.2f} ms,\n"
            f"{mha_long['ms'] / lk_long['ms']:.1f}× faster than MultiHeadAttention fp32 and {gqa_long['ms'] / lk_long['ms']:.1f}× faster than\n"
            f"onnxruntime's fastest GroupQueryAttention ({gqa_long['variant']}). Whole SmolLM2 at T = 8000, B = 4 decodes\n"
            f"{o['ms_per_step'] / q['ms_per_step']:.1f}× faster with int8 value rows in shared buffers than the original, with a\n"
            f"{o['cache_bytes'] / q['cache_bytes']:.1f}× smaller cache and {o['peak_rss_bytes'] / q['peak_rss_bytes']:.1f}× less peak memory. At T = 4096, B = 1\n"
            f"per-call costs weigh more: the best LOOKAT variant is {over_mha['gpt2']:.1f}× MultiHeadAttention fp32 (GPT-2's shape) and\n"
            f"{over_mha['smollm2']:.1f}× (SmolLM2's), {verdict(min(over_mha.values()), 10)} on both, and leads onnxruntime's\n"
            f"fastest GroupQueryAttention int4 by {lead['gpt2']:.1f}× and {lead['smollm2']:.1f}×: "
            f"{'meeting the 3× goal on both' if min(lead.values()) >= 3 else 'the 3× goal ' + ('met on SmolLM2’s shape only' if lead['smollm2'] >= 3 else 'met on GPT-2’s shape only' if lead['gpt2'] >= 3 else 'missed')}.\n"
            f"{prefill_text[0].upper() + prefill_text[1:]}.\n"
            f"Shared buffers matter as much as the codes: onnxruntime's GroupQueryAttention fp32 is\n"
            f"{min(share_gain):.1f}–{max(share_gain):.1f}× faster with its shared buffer than without, over the decode cells below."
        )
    short = [r["bandwidth_fraction"] for r in rows(res, mode="decode") if r["tokens"] <= 4096 and r["variant"].startswith("lookat")]
    short_bw = (min(short), max(short))
    page = f"""# Benchmarks

LookatAttention against onnxruntime's own attention (one layer), and whole models against their
LOOKAT rewrites, on the same machine, in the same command, with the same thread setting. Every
table below is rendered by `scripts/bench_md.py` from the JSON of one run of each command; the
prose quotes those tables.

{reading}

## Goals of issue 16, as measured here

| goal | measured | |
|---|---|---|
{chr(10).join(goals)}

## Commands and machine

```sh
.venv/bin/python scripts/bench.py --json B.json            # one layer ({secs[0]:.0f} s)
.venv/bin/python scripts/bench_e2e.py --json E.json        # whole models ({secs[1]:.0f} s)
.venv/bin/python scripts/value_fidelity.py --json V.json   # value types' quality ({secs[2]:.0f} s)
.venv/bin/python scripts/bench_md.py --bench B.json --e2e E.json --fidelity V.json --commit {args.commit} --seconds ...
```

Run at commit {args.commit} on the project's VM: {mach['cpu']}, {mach['cores']} vCPUs, caches
{', '.join(f'{k} {v}' for k, v in mach['caches'].items())} (sysfs); onnxruntime {mach['onnxruntime']}
(PyPI), CPU execution provider, {mach['threads']} intra-op threads; LookatAttention's kernels at the
CPU's SIMD level, {mach.get('lookat_simd', 'not recorded')} (`LOOKAT_MAX_SIMD=avx2` would choose AVX2). Copy bandwidth measured in the
same process: {mach['copy_bandwidth_gbs']:.1f} GB/s (read + write, {mach['threads']} threads). Each
one-layer variant rotates over input copies totalling more than {mach['ring_bytes'] >> 20} MiB, twice
the L3 the OS reports, so its cache comes from DRAM. The machine is shared with other tenants:
treat differences under ~20 % as noise.

What the one-layer tables show, per cell: median ms, the ratio to MultiHeadAttention fp32 (for
SmolLM2's shape with its kv heads repeated to 9, as an MHA export runs them), and for decode the
bytes a step must move (copying: read the past, write the present; shared: read the cache, write
the new row) over that time, as a fraction of the copy bandwidth. "B/token": cache bytes per token
of the layer (keys + values, all kv heads; LOOKAT: codes + value rows). GroupQueryAttention's
quantized caches and every shared-buffer variant are decode paths (no prefill rows). A fraction
above 1 is possible: the reference copy (numpy, `memcpy`) also reads every destination line before
writing it, while a read-only scan (shared buffers) moves only the bytes counted, and the op
writes large presents with streaming stores.

GroupQueryAttention's shared buffer on CPU: {'; '.join(f'{k}: {v}' for k, v in bench['gqa_shared_buffer'].items())}
(probed: one decode step with past and present bound to one buffer must write the new row there
and keep the rest).
{micro_tables(bench)}

## End to end: decode throughput of whole models

`scripts/bench_e2e.py`: each variant in its own process, a cache of T tokens set directly (random
contents), then {e2e['steps']} timed decode steps, {e2e['rounds']} rounds taken in turns; median.
Rewrites: `lookat-rewrite {' '.join(e2e['rewrite'])} --value-dtype f32|f16|i8 [--shared-cache]`,
codebooks random (speed does not depend on them). "cache MiB": all layers' cache state of the B
sequences at T (LOOKAT: codes, value rows and the key window). Peak RSS: the process's maximum
resident set (weights, onnxruntime's arenas and the cache).
{e2e_table(e2e)}

## Value types: quality on SmolLM2

`scripts/value_fidelity.py`: one calibration (`{' '.join(vf['rewrite'])}`, {vf['calib_tokens']}
tokens), the float16 and int8-row models get the same codebooks and transforms, so the value
type is the only difference; held-out text decoded through the caches in chunks of {vf['chunk']}.

{fidelity_table(vf)}

## ARM64: a cost model, not a measurement

No ARM64 timing is possible here (the ARM64 tests run under qemu, which says nothing about
speed). Per cached token and kv head, one decode step of SmolLM2's shape (G = 3 query heads per
kv head, D = 64, T ≫ 1) must move the bytes and do the operations below; the predicted time takes
the larger of memory time (8 GB/s streamed per core, LPDDR4X) and compute time on one
Cortex-A76-class core at 2.4 GHz (8 float32 multiply-adds per cycle on two 128-bit NEON pipes;
2 table lookups + adds per cycle on the load ports; 16 int8→float32 conversions per cycle).
Copying variants read the past and write the present; shared ones read once.

{cost_model()}

Read as: on such a core the float baselines are memory-bound and LOOKAT's shared variants are
about at the boundary (int8 rows: compute-bound, from the widening and the p·v multiply-adds).
The model counts only the per-token work of long contexts; it leaves out what a call costs
whatever T is — building the m·K tables per query, onnxruntime's dispatch, thread hand-offs —
which on the x86 VM above keeps LOOKAT's bandwidth fraction at {short_bw[0]:.2f}–{short_bw[1]:.2f} for T ≤ 4096, so
measured ratios at short contexts fall below the model's.
"""
    if args.phases:
        page += phases_section([json.load(open(p)) for p in args.phases.split(",")])
    if args.ort_versions:
        page += ort_versions_section([json.load(open(p)) for p in args.ort_versions.split(",")])
    with open(args.out, "w") as fh:
        fh.write(page)


if __name__ == "__main__":
    main()
