"""Benchmark (not a test): one attention layer, LookatAttention against onnxruntime's own
attention, all through onnxruntime sessions in this one process, same thread setting, side by
side, every variant driven the way a host runs it (IOBinding; outputs stay onnxruntime's).

Shapes: GPT-2 (12 heads × 64) and SmolLM2 (9 query / 3 kv heads × 64). Decode (S = 1) at
T ∈ {1024, 4096, 16384}, B ∈ {1, 4}; prefill (P = 0, S = T) at T ∈ {256, 1024}, B = 1.

Variants:
- onnxruntime MultiHeadAttention fp32 (SmolLM2's kv heads repeated to 9, as an MHA export runs
  them), the exporters' MatMul/Softmax subgraph fp32 (GPT-2 shape), GroupQueryAttention fp32 and
  with int8 / int4 caches (per-tensor scales), each GQA also with its shared max-length buffer
  (past and present bound to one buffer, `past_present_share_buffer`) where onnxruntime's CPU
  kernel takes it (probed at start: the present must come back in the bound buffer);
- LookatAttention m ∈ {2, 4} with float16 or int8 value rows, copying (compact caches) and
  shared (one buffer bound as past and present, appended in place).

Each variant cycles over copies of its inputs (and, for shared buffers, of its bindings) that
together exceed twice the L3 size the OS reports, so every run reads its cache from DRAM, as a
model does when the other layers run between two uses of one layer's cache. Variants of one
shape take turns over several rounds. Printed: median ms, ratio to MultiHeadAttention fp32,
cache bytes per token, bytes a step must move (copying: read the past, write the present;
shared: read the cache, write the new row) and that over the copy bandwidth measured in this
process. Usage:
    .venv/bin/python scripts/bench.py [--quick] [--threads 2] [--json out.json]
"""

import argparse
import json
import os
import platform
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
from lookat_testlib import plugin_path  # noqa: E402

D, K = 64, 256
SHAPES = {"gpt2": (12, 12), "smollm2": (9, 3)}  # (query heads, kv heads)
vi = helper.make_tensor_value_info


def model(nodes, inputs, outputs, inits=(), ms=False):
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.lookat", 1)]
    if ms:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    m = helper.make_model(helper.make_graph(nodes, "bench", inputs, outputs, list(inits)), opset_imports=opsets)
    m.ir_version = 9
    return m


def qkv(h, hkv):
    return [vi("q", T.FLOAT, ["B", "S", h * D]), vi("k", T.FLOAT, ["B", "S", hkv * D]),
            vi("v", T.FLOAT, ["B", "S", hkv * D])]


def lookat_model(h, hkv, m, values, shared):
    vt, last = {"f16": (T.FLOAT16, D), "int8": (T.INT8, D + 4), "f32": (T.FLOAT, D)}[values]
    books = np.random.default_rng(0).standard_normal((hkv, m, K, D // m)).astype(np.float32)
    ins = ["q", "k", "v", "past_codes", "past_value", "mask", "books"] + (["", "", "", "psl"] if shared else [])
    node = helper.make_node("LookatAttention", ins, ["out", "present_codes", "present_value"],
                            domain="com.lookat", num_heads=h, num_kv_heads=hkv)
    rows_in, rows_out = ("C", "C") if shared else ("P", "T")
    inputs = qkv(h, hkv) + [vi("past_codes", T.UINT8, ["B", hkv, rows_in, m]),
                            vi("past_value", vt, ["B", hkv, rows_in, last]), vi("mask", T.INT64, ["B", "T"])]
    if shared:
        inputs.append(vi("psl", T.INT64, []))
    return model([node], inputs,
                 [vi("out", T.FLOAT, ["B", "S", h * D]), vi("present_codes", T.UINT8, ["B", hkv, rows_out, m]),
                  vi("present_value", vt, ["B", hkv, rows_out, last])],
                 [nh.from_array(books, "books")])


def mha_model(h):
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v", "", "", "", "past_key", "past_value"], ["out", "present_key", "present_value"],
        domain="com.microsoft", num_heads=h, unidirectional=1,
    )
    return model([node], qkv(h, h) + [vi("past_key", T.FLOAT, ["B", h, "P", D]), vi("past_value", T.FLOAT, ["B", h, "P", D])],
                 [vi("out", T.FLOAT, ["B", "S", h * D]), vi("present_key", T.FLOAT, ["B", h, "T", D]),
                  vi("present_value", T.FLOAT, ["B", h, "T", D])], ms=True)


def plain_model(h, causal):
    """The exporters' MatMul/Softmax/MatMul subgraph with the cache Concat; `causal` adds the
    -inf bias above the diagonal that a prefill needs (sliced from a 1024² constant, as GPT-2
    exports do: prefill is measured up to T = 1024), decode (S = 1) needs none."""
    n = helper.make_node
    nodes = [
        n("Reshape", ["q", "shape4"], ["q4r"]), n("Transpose", ["q4r"], ["q4"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k", "shape4"], ["k4r"]), n("Transpose", ["k4r"], ["k4"], perm=[0, 2, 1, 3]),
        n("Reshape", ["v", "shape4"], ["v4r"]), n("Transpose", ["v4r"], ["v4"], perm=[0, 2, 1, 3]),
        n("Concat", ["past_key", "k4"], ["present_key"], axis=2), n("Concat", ["past_value", "v4"], ["present_value"], axis=2),
        n("Transpose", ["present_key"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["q4", "kt"], ["s"]),
        n("Mul", ["s", "scale"], ["ss"]),
    ]
    inits = []
    if causal:
        nodes += [
            n("Shape", ["ss"], ["sshape"]), n("Gather", ["sshape", "i2"], ["sq"]), n("Gather", ["sshape", "i3"], ["tk"]),
            n("Sub", ["tk", "sq"], ["start"]), n("Slice", ["causal", "start", "tk", "zero"], ["rows"]),
            n("Slice", ["rows", "zero", "tk", "one"], ["bias"]), n("Add", ["ss", "bias"], ["sb"]),
        ]
        inits = [nh.from_array(np.array([2], np.int64), "i2"), nh.from_array(np.array([3], np.int64), "i3"),
                 nh.from_array(np.array([0], np.int64), "zero"), nh.from_array(np.array([1], np.int64), "one"),
                 nh.from_array(np.triu(np.full((1024, 1024), -np.inf, np.float32), 1), "causal")]
    nodes += [
        n("Softmax", ["sb" if causal else "ss"], ["p"], axis=-1), n("MatMul", ["p", "present_value"], ["o4"]),
        n("Transpose", ["o4"], ["o3"], perm=[0, 2, 1, 3]), n("Reshape", ["o3", "shape3"], ["out"]),
    ]
    return model(
        nodes, qkv(h, h) + [vi("past_key", T.FLOAT, ["B", h, "P", D]), vi("past_value", T.FLOAT, ["B", h, "P", D])],
        [vi("out", T.FLOAT, ["B", "S", h * D]), vi("present_key", T.FLOAT, ["B", h, "T", D]),
         vi("present_value", T.FLOAT, ["B", h, "T", D])],
        [nh.from_array(np.array([0, 0, h, D], np.int64), "shape4"), nh.from_array(np.array([0, 0, h * D], np.int64), "shape3"),
         nh.from_array(np.array(1 / np.sqrt(D), np.float32), "scale")] + inits,
    )


def gqa_model(h, hkv, bits, shared):
    kv = {32: T.FLOAT, 8: T.INT8, 4: T.UINT8}[bits]
    last = D // 2 if bits == 4 else D
    attrs = dict(num_heads=h, kv_num_heads=hkv)
    inits = []
    ins = ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_len"]
    if bits != 32:
        attrs.update(k_quant_type="PER_TENSOR", v_quant_type="PER_TENSOR", kv_cache_bit_width=bits)
        ins += ["", "", "", "", "", "k_scale", "v_scale"]
        inits = [nh.from_array(np.array([0.05], np.float32), "k_scale"), nh.from_array(np.array([0.05], np.float32), "v_scale")]
    rows_in, rows_out = ("C", "C") if shared else ("P", "T")
    node = helper.make_node("GroupQueryAttention", ins, ["out", "present_key", "present_value"], domain="com.microsoft", **attrs)
    return model([node], qkv(h, hkv) + [vi("past_key", kv, ["B", hkv, rows_in, last]), vi("past_value", kv, ["B", hkv, rows_in, last]),
                                        vi("seqlens_k", T.INT32, ["B"]), vi("total_len", T.INT32, [])],
                 [vi("out", T.FLOAT, ["B", "S", h * D]), vi("present_key", kv, ["B", hkv, rows_out, last]),
                  vi("present_value", kv, ["B", hkv, rows_out, last])], inits, ms=True)


class Variant:
    """One attention implementation: its model, how its cache is laid out, and whether past and
    present share one buffer."""

    def __init__(self, name, mdl, cache, shared=False, heads=None, modes=("decode", "prefill")):
        self.name, self.model, self.cache, self.shared, self.heads = name, mdl, cache, shared, heads
        # Shared buffers and GQA's quantized caches are decode paths.
        self.modes = ("decode",) if shared or cache in ("int8", "int4") else modes

    def per_token(self, hkv):
        """Cache bytes per token (one layer, all kv heads)."""
        kind = self.cache
        if kind == "f32kv":
            return 2 * (self.heads or hkv) * D * 4
        if kind in ("int8", "int4"):
            return 2 * hkv * (D if kind == "int8" else D // 2)
        _, m, values = kind
        return hkv * (m + {"f16": 2 * D, "int8": D + 4, "f32": 4 * D}[values])


def variants_for(shape):
    h, hkv = SHAPES[shape]
    out = [Variant("mha fp32" + (" (kv repeated)" if hkv != h else ""), mha_model(h), "f32kv", heads=h)]
    if hkv == h:
        out.append(Variant("matmul-softmax fp32", plain_model(h, False), "f32kv", heads=h, modes=("decode",)))
        out.append(Variant("matmul-softmax fp32 causal", plain_model(h, True), "f32kv", heads=h, modes=("prefill",)))
    for bits, cache in ((32, "f32kv"), (8, "int8"), (4, "int4")):
        label = {32: "gqa fp32", 8: "gqa int8", 4: "gqa int4"}[bits]
        out.append(Variant(label, gqa_model(h, hkv, bits, False), cache))
        out.append(Variant(label + " shared", gqa_model(h, hkv, bits, True), cache, shared=True))
    for m in (4, 2):
        for values in ("f16", "int8"):
            for shared in (False, True):
                out.append(Variant(f"lookat m={m} {values}" + (" shared" if shared else ""),
                                   lookat_model(h, hkv, m, values, shared), ("codes", m, values), shared=shared))
    return out


def cache_sizes():
    """The CPU's caches as sysfs reports them: {"L3 Unified": "32768K", ...}."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    for idx in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            level, kind, size = (open(os.path.join(base, idx, f)).read().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        out[f"L{level} {kind}"] = size
    return out


def largest_cache_bytes(caches):
    """The largest of `cache_sizes()`, in bytes (32 MiB when sysfs says nothing)."""
    sizes = [int(v.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(v[-1], 1) for v in caches.values()]
    return max(sizes, default=32 << 20)


def lookat_simd():
    """The SIMD level the op's kernels choose on this CPU, by the rule of `simd::level()`
    (op/src/kernels/simd/mod.rs): AVX-512 F/BW/VL, else AVX2+FMA+F16C, else scalar (x86_64)."""
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if os.environ.get("LOOKAT_FORCE_SCALAR"):
        return "scalar"
    if {"avx2", "fma", "f16c"} <= flags:
        if {"avx512f", "avx512bw", "avx512vl"} <= flags and os.environ.get("LOOKAT_MAX_SIMD") != "avx2":
            return "avx512f+bw+vl"
        return "avx2+fma+f16c"
    return "neon" if platform.machine() in ("aarch64", "arm64") else "scalar"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class Runner:
    """Runs of one variant over a ring of input copies spanning more than `ring_bytes`, each copy
    with its own IOBinding: q/k/v and the cache bound as inputs, the output and (copying mode)
    the presents left to onnxruntime, or (shared mode) the presents bound to the pasts' buffers."""

    def __init__(self, sess, variant, feeds, ring_bytes):
        size = sum(v.nbytes for v in feeds.values())
        copies = max(2, -(-ring_bytes // max(size, 1)))
        self.sess, self.bindings, self.keep = sess, [], []
        outputs = [o.name for o in sess.get_outputs()]
        cache_pairs = {"past_codes": "present_codes", "past_value": "present_value", "past_key": "present_key"}
        for i in range(copies):
            f = feeds if i == 0 else {k: v.copy() for k, v in feeds.items()}
            self.keep.append(f)
            b = sess.io_binding()
            for k, v in f.items():
                if variant.shared and k in cache_pairs:
                    ov = ort.OrtValue.ortvalue_from_numpy(v)
                    self.keep.append(ov)
                    b.bind_ortvalue_input(k, ov)
                    b.bind_ortvalue_output(cache_pairs[k], ov)
                else:
                    b.bind_cpu_input(k, v)
            for o in outputs:
                if not (variant.shared and o in cache_pairs.values()):
                    b.bind_output(o, "cpu")
            self.bindings.append(b)
        self.i = 0
        self.ring_bytes = copies * size
        # One untimed run per copy: its outputs are allocated (and the pages touched) now, then
        # reused by later runs, as onnxruntime's arena reuses a decoding host's buffers; timed
        # runs measure the kernels, not first-touch page faults.
        for b in self.bindings:
            sess.run_with_iobinding(b)

    def __call__(self):
        self.sess.run_with_iobinding(self.bindings[self.i])
        self.i = (self.i + 1) % len(self.bindings)


def feeds_for(variant, shape, b, p, s, rng):
    h, hkv = SHAPES[shape]
    heads = variant.heads or hkv
    t = p + s
    f = {"q": rng.standard_normal((b, s, h * D)).astype(np.float32),
         "k": rng.standard_normal((b, s, heads * D)).astype(np.float32),
         "v": rng.standard_normal((b, s, heads * D)).astype(np.float32)}
    rows = t if variant.shared else p
    kind = variant.cache
    if kind == "f32kv":
        f["past_key"] = rng.standard_normal((b, heads, rows, D)).astype(np.float32)
        f["past_value"] = rng.standard_normal((b, heads, rows, D)).astype(np.float32)
    elif kind in ("int8", "int4"):
        last, dt = (D, np.int8) if kind == "int8" else (D // 2, np.uint8)
        f["past_key"] = rng.integers(-100, 100, (b, hkv, rows, last)).astype(dt)
        f["past_value"] = rng.integers(-100, 100, (b, hkv, rows, last)).astype(dt)
    else:
        _, m, values = kind
        f["past_codes"] = rng.integers(0, K, (b, hkv, rows, m)).astype(np.uint8)
        if values == "int8":
            v = rng.integers(-127, 128, (b, hkv, rows, D + 4)).astype(np.int8)
            v[..., D:] = np.frombuffer(np.full(b * hkv * rows, 0.01, np.float32).tobytes(), np.int8).reshape(b, hkv, rows, 4)
            f["past_value"] = v
        else:
            f["past_value"] = rng.standard_normal((b, hkv, rows, D)).astype(np.float16)
        f["mask"] = np.ones((b, t), np.int64)
        if variant.shared:
            f["psl"] = np.array(p, np.int64)
    if variant.name.startswith("gqa"):
        f["seqlens_k"] = np.full(b, t - 1, np.int32)
        f["total_len"] = np.array(t, np.int32)
    return f


def gqa_shares_buffer(sess, variant, shape, rng):
    """Whether onnxruntime's CPU GroupQueryAttention writes the new token into a bound shared
    buffer (the row P of the bound present after one decode step is no longer what was there)."""
    feeds = feeds_for(variant, shape, 1, 15, 1, rng)
    before = feeds["past_key"].copy()
    try:
        Runner(sess, variant, feeds, 0)()
    except Exception as e:  # noqa: BLE001 - a refusal is the answer
        return False, f"refused: {str(e).splitlines()[0][:160]}"
    changed = not np.array_equal(feeds["past_key"][:, :, 15], before[:, :, 15])
    kept = np.array_equal(feeds["past_key"][:, :, :15], before[:, :, :15])
    return changed and kept, ("appends in place" if changed and kept else "does not write the bound buffer")


def pin_main_thread():
    """Pins the calling thread to CPU 0 (see `pinned_session`)."""
    os.sched_setaffinity(0, {0})


def pinned_session(model, threads, pin=True):
    """A session whose intra-op worker threads sit on CPUs 1 … threads−1, the caller being pinned
    to CPU 0 (`pin_main_thread`). Each variant has its own session, so one process holds many
    thread pools; unpinned, Linux kept a pool's woken worker on the caller's CPU for seconds at a
    time, and every variant that uses both threads ran up to ~1.7× slower in such phases
    (`scripts/bench_phases.py --no-pin` shows them). Pinning every session the same way keeps the
    comparison fair and the phases out. `pin=False` leaves the threads unpinned."""
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(plugin_path())
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if pin and threads > 1:
        if threads > (os.cpu_count() or 1):
            sys.exit(f"--threads {threads}: this machine has {os.cpu_count()} CPUs")
        opts.add_session_config_entry(
            "session.intra_op_thread_affinities", ";".join(str(cpu + 1) for cpu in range(1, threads)))
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def timed_in_rounds(runs, rounds, per_round):
    """Median seconds per run of each callable. Every round runs each variant in turn: a pause
    (each session has its own thread pool, whose threads spin for a while after a run), three
    untimed runs (after the pause, the first runs of a session are slower), then `per_round`
    timed runs."""
    times = [[] for _ in runs]
    for _ in range(rounds):
        for run, ts in zip(runs, times):
            time.sleep(0.1)
            for _ in range(3):
                run()
            for _ in range(per_round):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="decode at T = 4096, B = 1 only; prefill at T = 256")
    ap.add_argument("--shapes", default="gpt2,smollm2")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1)
    bw = bandwidth_gbs(args.threads)
    pin_main_thread()  # after the copy's threads, which would inherit it
    caches = cache_sizes()
    l3 = largest_cache_bytes(caches)
    ring = 2 * l3
    machine = dict(cpu=cpu_name(), cores=os.cpu_count(), caches=caches, l3_bytes=l3, lookat_simd=lookat_simd(),
                   copy_bandwidth_gbs=bw, ring_bytes=ring, onnxruntime=ort.__version__, threads=args.threads)
    print(f"onnxruntime {ort.__version__}, threads {args.threads}, {machine['cpu']}, caches {machine['caches']}; "
          f"copy bandwidth {bw:.1f} GB/s (read+write); inputs rotate over > {ring >> 20} MiB (2x L3)")
    lengths, batches = ([4096], [1]) if args.quick else ([1024, 4096, 16384], [1, 4])
    prefills = [256] if args.quick else [256, 1024]
    results, gqa_share = [], {}
    for shape in args.shapes.split(","):
        h, hkv = SHAPES[shape]
        variants = variants_for(shape)
        sessions = []
        for v in variants:
            sess = pinned_session(v.model, args.threads)
            if v.name.startswith("gqa") and v.shared:
                ok, why = gqa_shares_buffer(sess, v, shape, rng)
                gqa_share[f"{shape} {v.name}"] = why
                print(f"{shape}: {v.name}: {why}")
                if not ok:
                    continue
            sessions.append((v, sess))
        print(f"\n== {shape}: {h} query / {hkv} kv heads x {D}")
        print(f"{'mode':8} {'B':>2} {'T':>6} {'variant':26} {'ms':>9} {'vs MHA':>7} {'B/token':>8} {'moved MB':>9} {'bw frac':>7}")
        for mode in ("decode", "prefill"):
            for b in batches if mode == "decode" else [1]:
                for t in lengths if mode == "decode" else prefills:
                    p, s = (t - 1, 1) if mode == "decode" else (0, t)
                    chosen = [(v, sess) for v, sess in sessions if mode in v.modes]
                    runs = [Runner(sess, v, feeds_for(v, shape, b, p, s, rng), ring) for v, sess in chosen]
                    long = t * b > 4096
                    medians = timed_in_rounds(runs, rounds=3 if long else 5, per_round=3 if long else 6)
                    del runs
                    base = medians[0]
                    for (v, _), sec in zip(chosen, medians):
                        per_token = v.per_token(hkv)
                        # Copying: read the past, write the present; shared: read the cache once
                        # and write the new row.
                        moved = b * per_token * (t if v.shared else (p + t)) if mode == "decode" else float("nan")
                        frac = moved / sec / (bw * 1e9) if mode == "decode" else float("nan")
                        print(f"{mode:8} {b:>2} {t:>6} {v.name:26} {sec * 1e3:9.3f} {base / sec:6.2f}x {per_token:8.0f} "
                              f"{moved / 1e6:9.2f} {frac:7.2f}")
                        results.append(dict(shape=shape, mode=mode, batch=b, tokens=t, variant=v.name, ms=sec * 1e3,
                                            speedup_vs_mha=base / sec, cache_bytes_per_token=per_token,
                                            bytes_moved=moved, bandwidth_fraction=frac))
                    print()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=machine, gqa_shared_buffer=gqa_share, results=results), fh, indent=1)
    return results


if __name__ == "__main__":
    main()
