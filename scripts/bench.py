"""Benchmark (not a test): LookatAttention against onnxruntime's own attention, all through
onnxruntime sessions in this one process, same thread setting, side by side.

Decode (S = 1) at T in {256, 1024, 4096, 16384} and B in {1, 4}, H = 12, D = 64; prefill at
T in {256, 1024}. Variants of one shape take turns over several rounds, and each cycles over
copies of its inputs so that caches come from DRAM (see timed_in_rounds, rotating). Prints median
latency, ratios to MultiHeadAttention fp32, cache bytes per token and the achieved fraction of
the memory bandwidth measured in this process; then the end-to-end decode of the trained fixture,
original vs calibrated (scripts/bench_e2e.py; needs ./scripts/demo.sh run once). Usage:
    .venv/bin/python scripts/bench.py [--quick] [--threads 2] [--no-e2e] [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper
from onnx import numpy_helper as nh

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from lookat_testlib import session  # noqa: E402

H, D, K = 12, 64, 256
E = H * D
vi = helper.make_tensor_value_info


def model(nodes, inputs, outputs, inits=(), ms=False):
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.lookat", 1)]
    if ms:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    m = helper.make_model(helper.make_graph(nodes, "bench", inputs, outputs, list(inits)), opset_imports=opsets)
    m.ir_version = 9
    return m


def lookat_model(m, f16):
    vt = T.FLOAT16 if f16 else T.FLOAT
    rng = np.random.default_rng(0)
    books = rng.standard_normal((H, m, K, D // m)).astype(np.float32)
    node = helper.make_node(
        "LookatAttention",
        ["q", "k", "v", "past_codes", "past_value", "mask", "books"],
        ["out", "present_codes", "present_value"],
        domain="com.lookat",
        num_heads=H,
    )
    return model(
        [node],
        [vi("q", T.FLOAT, ["B", "S", E]), vi("k", T.FLOAT, ["B", "S", E]), vi("v", T.FLOAT, ["B", "S", E]),
         vi("past_codes", T.UINT8, ["B", H, "P", m]), vi("past_value", vt, ["B", H, "P", D]), vi("mask", T.INT64, ["B", "T"])],
        [vi("out", T.FLOAT, ["B", "S", E]), vi("present_codes", T.UINT8, ["B", H, "T", m]), vi("present_value", vt, ["B", H, "T", D])],
        [nh.from_array(books, "books")],
    )


def mha_model():
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v", "", "", "", "past_key", "past_value"], ["out", "present_key", "present_value"],
        domain="com.microsoft", num_heads=H, unidirectional=1,
    )
    return model(
        [node],
        [vi("q", T.FLOAT, ["B", "S", E]), vi("k", T.FLOAT, ["B", "S", E]), vi("v", T.FLOAT, ["B", "S", E]),
         vi("past_key", T.FLOAT, ["B", H, "P", D]), vi("past_value", T.FLOAT, ["B", H, "P", D])],
        [vi("out", T.FLOAT, ["B", "S", E]), vi("present_key", T.FLOAT, ["B", H, "T", D]), vi("present_value", T.FLOAT, ["B", H, "T", D])],
        ms=True,
    )


def plain_model():
    """The exporters' MatMul/Softmax/MatMul subgraph with the cache Concat (decode, S = 1)."""
    n = helper.make_node
    nodes = [
        n("Reshape", ["q", "shape4"], ["q4r"]), n("Transpose", ["q4r"], ["q4"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k", "shape4"], ["k4r"]), n("Transpose", ["k4r"], ["k4"], perm=[0, 2, 1, 3]),
        n("Reshape", ["v", "shape4"], ["v4r"]), n("Transpose", ["v4r"], ["v4"], perm=[0, 2, 1, 3]),
        n("Concat", ["past_key", "k4"], ["present_key"], axis=2), n("Concat", ["past_value", "v4"], ["present_value"], axis=2),
        n("Transpose", ["present_key"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["q4", "kt"], ["s"]),
        n("Mul", ["s", "scale"], ["ss"]), n("Softmax", ["ss"], ["p"], axis=-1), n("MatMul", ["p", "present_value"], ["o4"]),
        n("Transpose", ["o4"], ["o3"], perm=[0, 2, 1, 3]), n("Reshape", ["o3", "shape3"], ["out"]),
    ]
    return model(
        nodes,
        [vi("q", T.FLOAT, ["B", "S", E]), vi("k", T.FLOAT, ["B", "S", E]), vi("v", T.FLOAT, ["B", "S", E]),
         vi("past_key", T.FLOAT, ["B", H, "P", D]), vi("past_value", T.FLOAT, ["B", H, "P", D])],
        [vi("out", T.FLOAT, ["B", "S", E]), vi("present_key", T.FLOAT, ["B", H, "T", D]), vi("present_value", T.FLOAT, ["B", H, "T", D])],
        [nh.from_array(np.array([0, 0, H, D], np.int64), "shape4"), nh.from_array(np.array([0, 0, E], np.int64), "shape3"),
         nh.from_array(np.array(1 / np.sqrt(D), np.float32), "scale")],
    )


def gqa_model(bits):
    kv = T.INT8 if bits == 8 else T.UINT8
    last = D if bits == 8 else D // 2
    node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_len", "", "", "", "", "", "k_scale", "v_scale"],
        ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=H, kv_num_heads=H,
        k_quant_type="PER_TENSOR", v_quant_type="PER_TENSOR", kv_cache_bit_width=bits,
    )
    return model(
        [node],
        [vi("q", T.FLOAT, ["B", "S", E]), vi("k", T.FLOAT, ["B", "S", E]), vi("v", T.FLOAT, ["B", "S", E]),
         vi("past_key", kv, ["B", H, "P", last]), vi("past_value", kv, ["B", H, "P", last]),
         vi("seqlens_k", T.INT32, ["B"]), vi("total_len", T.INT32, [])],
        [vi("out", T.FLOAT, ["B", "S", E]), vi("present_key", kv, ["B", H, "T", last]), vi("present_value", kv, ["B", H, "T", last])],
        [nh.from_array(np.array([0.05], np.float32), "k_scale"), nh.from_array(np.array([0.05], np.float32), "v_scale")],
        ms=True,
    )


def timed_in_rounds(runs, rounds, per_round):
    """Median seconds per run of each callable. Every round runs each variant in turn: a pause
    (each session has its own thread pool, whose threads spin for a while after a run and steal a
    core from the next session; a 10 ms pause was not long enough on the 2-core VM), one untimed
    run, then `per_round` timed runs. Several rounds spread machine noise over all variants
    alike."""
    times = [[] for _ in runs]
    for _ in range(rounds):
        for run, ts in zip(runs, times):
            time.sleep(0.1)
            run()
            for _ in range(per_round):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def rotating(sess, feeds, ring_bytes=64 << 20, max_copies=16):
    """A run that cycles over copies of its inputs spanning at least `ring_bytes` (twice this
    machine's 32 MB L3) where that takes at most `max_copies`: consecutive runs then read their
    caches from DRAM, as a model does, where every other layer runs between two uses of a
    layer's cache. Without it a repeated single-node run reads caches of up to ~30 MB from the
    L3 and overstates every variant at T <= 4096."""
    size = sum(v.nbytes for v in feeds.values())
    copies = max(1, min(max_copies, -(-ring_bytes // max(size, 1))))
    ring = [feeds] + [{k: v.copy() for k, v in feeds.items()} for _ in range(copies - 1)]
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(ring)
        sess.run(None, ring[state["i"]])
    return run


def bandwidth_gbs(threads):
    """Read+write bandwidth of a 512 MiB copy split over `threads` threads (numpy releases the
    GIL while copying), best of 5: the attention variants run on that many threads too."""
    from concurrent.futures import ThreadPoolExecutor
    a = np.ones(128 << 20, np.float32)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(a.size), threads)
    spans = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    with ThreadPoolExecutor(threads) as pool:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            list(pool.map(lambda span: np.copyto(b[span[0]:span[1]], a[span[0]:span[1]]), spans))
            best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="T up to 4096, B = 1 only")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end fixture decode (needs ./scripts/demo.sh first)")
    ap.add_argument("--json")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    bw = bandwidth_gbs(args.threads)
    print(f"onnxruntime {ort.__version__}, threads {args.threads}, H={H} D={D} K={K}; measured copy bandwidth {bw:.1f} GB/s (read+write, {args.threads} threads)")
    variants = [("mha fp32", mha_model(), "f32kv"), ("matmul-softmax fp32", plain_model(), "f32kv"),
                ("gqa int8", gqa_model(8), "int8"), ("gqa int4", gqa_model(4), "int4")]
    for m in (2, 4, 8):
        variants.append((f"lookat m={m} f32", lookat_model(m, False), ("codes", m, np.float32)))
        variants.append((f"lookat m={m} f16", lookat_model(m, True), ("codes", m, np.float16)))
    sessions = [(name, session(mdl, args.threads), kind) for name, mdl, kind in variants]
    lengths = [256, 1024, 4096] if args.quick else [256, 1024, 4096, 16384]
    batches = [1] if args.quick else [1, 4]
    results = []

    def feeds_for(kind, b, p, s):
        q = rng.standard_normal((b, s, E)).astype(np.float32)
        f = {"q": q, "k": rng.standard_normal((b, s, E)).astype(np.float32), "v": rng.standard_normal((b, s, E)).astype(np.float32)}
        if kind == "f32kv":
            f["past_key"] = rng.standard_normal((b, H, p, D)).astype(np.float32)
            f["past_value"] = rng.standard_normal((b, H, p, D)).astype(np.float32)
            per_token = 2 * H * D * 4
        elif kind in ("int8", "int4"):
            last = D if kind == "int8" else D // 2
            dt = np.int8 if kind == "int8" else np.uint8
            f["past_key"] = rng.integers(-100, 100, (b, H, p, last)).astype(dt)
            f["past_value"] = rng.integers(-100, 100, (b, H, p, last)).astype(dt)
            f["seqlens_k"] = np.full(b, p + s - 1, np.int32)
            f["total_len"] = np.array(p + s, np.int32)
            per_token = 2 * H * last
        else:
            _, m, vt = kind
            f["past_codes"] = rng.integers(0, K, (b, H, p, m)).astype(np.uint8)
            f["past_value"] = rng.standard_normal((b, H, p, D)).astype(vt)
            f["mask"] = np.ones((b, p + s), np.int64)
            per_token = H * m + H * D * np.dtype(vt).itemsize
        return f, per_token

    print(f"\n{'mode':8} {'B':>2} {'T':>6} {'variant':22} {'ms':>9} {'vs MHA':>7} {'cache B/token':>13} {'bw frac':>7}")
    for mode in ("decode", "prefill"):
        for b in batches:
            for t in lengths:
                if mode == "prefill" and (t > 1024 or b > 1):
                    continue  # O(T²) attention prefill past 1024 tokens does not fit the 10-minute budget here
                p, s = (t - 1, 1) if mode == "decode" else (0, t)
                chosen = [(name, sess, kind) for name, sess, kind in sessions
                          if not (mode == "prefill" and kind in ("int8", "int4"))]  # GQA's quantized cache is a decode path
                feeds = [feeds_for(kind, b, p, s) for _, _, kind in chosen]
                runs = [rotating(sess, f) for (_, sess, _), (f, _) in zip(chosen, feeds)]
                long = t * b > 4096
                medians = timed_in_rounds(runs, rounds=2 if long else 3, per_round=3 if long else 5)
                del runs
                base = medians[0] * 1e3
                for (name, _, _), (_, per_token), sec in zip(chosen, feeds, medians):
                    ms = sec * 1e3
                    # Bytes a decode step must move at least: read the past cache, write the present one.
                    moved = 2 * b * t * per_token
                    frac = moved / sec / (bw * 1e9) if mode == "decode" else float("nan")
                    print(f"{mode:8} {b:>2} {t:>6} {name:22} {ms:9.3f} {base / ms:6.2f}x {per_token:13.0f} {frac:7.2f}")
                    results.append(dict(mode=mode, batch=b, tokens=t, variant=name, ms=ms, speedup_vs_mha=base / ms,
                                        cache_bytes_per_token=per_token, bandwidth_fraction=frac))
                print()
    e2e = None
    if not args.no_e2e:
        print("== end to end: original vs calibrated trained fixture (scripts/bench_e2e.py)")
        import bench_e2e
        e2e = bench_e2e.main(["--threads", str(args.threads)])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(bandwidth_gbs=bw, threads=args.threads, onnxruntime=ort.__version__, results=results, end_to_end=e2e), fh, indent=1)


if __name__ == "__main__":
    main()
