"""Benchmark (not a test): end-to-end decode throughput of whole models, original against
LOOKAT rewrites, through onnxruntime with IOBinding (python/lookat/decode.py's CacheDecoder).

Models: SmolLM2-135M (30 layers, 9 query / 3 kv heads; models/fixtures/smollm2/dyn18-eager-kv.onnx)
and the trained GPT-2 fixture (2 layers; contexts up to its 1024 positions). Rewrites at the
README's recommended setting (m = 16, transforms, 4 sinks + 64 recent keys in float16) with each
value type (float32, float16, int8 rows), copying (compact caches) and shared (one max-length
buffer per cache tensor bound as past and present). Codebooks and transforms are seeded random
(identity transforms): decode speed does not depend on their values, and quality is measured
elsewhere (docs/RESULTS.md).

For each model, context T and batch B, every variant runs in a fresh process (so that its peak
RSS is its own): a cache of T tokens is set directly (random contents: a real prefill of 8000
tokens would cost minutes per variant and does not change the decode step), then --steps decode
steps with random token ids are timed; the processes of one (T, B) run in turn, --rounds times.
Printed: median ms per step and tokens/s (B tokens per step), the ratio to the original, the
cache bytes per sequence at T and the process's peak RSS. Usage:
    .venv/bin/python scripts/bench_e2e.py [--threads 2] [--steps 8] [--rounds 2] [--json out.json]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, os.path.join(ROOT, "python", "lookat"))

MODELS = {
    "smollm2": dict(path="models/fixtures/smollm2/dyn18-eager-kv.onnx", contexts=[512, 2048, 8000]),
    "gpt2-fixture": dict(path="models/fixtures/trained/dyn18-eager-kv.onnx", contexts=[512]),
}
REWRITE = ["--subspaces", "16", "--transform", "--sinks", "4", "--window", "64"]
VALUES = {"f32": "f32", "f16": "f16", "int8": "i8"}


def fill(path):
    """Seeded random codebooks and identity transforms in place of the rewrite's NaNs; the
    weights stay external, referenced, not loaded."""
    import onnx
    from lookat_testlib import random_codebooks
    onnx.save(random_codebooks(onnx.load(path, load_external_data=False)), path)


def rewrite_all(model):
    """The original and its rewrites, {label: path}; the rewrites sit next to the export (its
    external weights are referenced, not copied) as .bench-* files."""
    src = os.path.join(ROOT, MODELS[model]["path"])
    out = {"original": src}
    for label, dtype in VALUES.items():
        for shared in (False, True):
            name = f"lookat {label}" + (" shared" if shared else "")
            path = os.path.join(os.path.dirname(src), f".bench-{label}{'-shared' if shared else ''}.onnx")
            cmd = [os.path.join(ROOT, "target", "release", "lookat-rewrite"), src, "-o", path, *REWRITE,
                   "--value-dtype", dtype] + (["--shared-cache"] if shared else [])
            subprocess.run(cmd, check=True, capture_output=True)
            fill(path)
            out[name] = path
    return out


def run_one(path, context, batch, steps, threads):
    """In this process: a decoder with a random cache of `context` tokens, `steps` timed decode
    steps. Returns seconds per step, cache bytes and peak RSS."""
    import onnxruntime as ort
    from decode import CacheDecoder, DTYPES
    from lookat_testlib import plugin_path

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(plugin_path())
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    dec = CacheDecoder(sess, max_length=context + steps + 2, batch=batch)
    rng = np.random.default_rng(0)
    inputs = {i.name: i for i in sess.get_inputs() if i.name.startswith("past_key_values.")}

    class RandomCache(dict):
        """Each layer's random cache made when the decoder asks for it: a shared buffer copies
        it and drops it, so the peak RSS is the decoder's own, not the harness's."""

        def __missing__(self, name):
            i = inputs[name]
            dtype = DTYPES[i.type]
            rows = context if i.shape[2] != "past_window" else min(context, 68)
            shape = (batch, i.shape[1], rows, i.shape[3])
            if dtype == np.uint8:
                return rng.integers(0, 256, shape).astype(np.uint8)
            if dtype == np.int8:
                a = rng.integers(-127, 128, shape).astype(np.int8)
                a[..., -4:] = np.frombuffer(np.full(shape[:3], 0.01, np.float32).tobytes(), np.int8).reshape(*shape[:3], 4)
                return a
            return (rng.standard_normal(shape, np.float32) * 0.5).astype(dtype)

    arrays = RandomCache()
    dec.set_cache(arrays, context)
    del arrays
    vocab = sess.get_outputs()[0].shape[-1]
    vocab = vocab if isinstance(vocab, int) else 1000
    dec.step(rng.integers(0, vocab, (batch, 1)))  # warm-up
    times = []
    for _ in range(steps):
        ids = rng.integers(0, vocab, (batch, 1))
        t0 = time.perf_counter()
        dec.step(ids)
        times.append(time.perf_counter() - t0)
    # Cache bytes of the sequences at T (shared buffers: their valid rows).
    dec.length = context
    cache = dec.cache_bytes()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(seconds_per_step=statistics.median(times), cache_bytes=cache, peak_rss_bytes=rss)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="smollm2,gpt2-fixture")
    ap.add_argument("--contexts", help="override every model's contexts (comma separated)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--json")
    ap.add_argument("--one", nargs=5, metavar=("PATH", "T", "B", "STEPS", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        path, t, b, steps, threads = args.one
        print(json.dumps(run_one(path, int(t), int(b), int(steps), int(threads))))
        return None
    import onnxruntime as ort
    batches = [int(x) for x in args.batches.split(",")]
    results = []
    made = []
    try:
        for model in args.models.split(","):
            paths = rewrite_all(model)
            made += [p for label, p in paths.items() if label != "original"]
            contexts = [int(x) for x in args.contexts.split(",")] if args.contexts else MODELS[model]["contexts"]
            print(f"\n== {model} (onnxruntime {ort.__version__}, {args.threads} threads, {args.steps} steps x {args.rounds} rounds)")
            print(f"{'T':>5} {'B':>2} {'variant':22} {'ms/step':>9} {'tok/s':>8} {'vs orig':>7} {'cache MiB':>10} {'peak RSS MiB':>12}")
            for t in contexts:
                for b in batches:
                    runs = {label: [] for label in paths}
                    info = {}
                    for _ in range(args.rounds):
                        for label, path in paths.items():
                            out = subprocess.run([sys.executable, __file__, "--one", path, str(t), str(b), str(args.steps),
                                                  str(args.threads)], check=True, capture_output=True, text=True).stdout
                            r = json.loads(out.strip().splitlines()[-1])
                            runs[label].append(r["seconds_per_step"])
                            info[label] = r
                    base = statistics.median(runs["original"])
                    for label in paths:
                        sec = statistics.median(runs[label])
                        row = dict(model=model, context=t, batch=b, variant=label, ms_per_step=sec * 1e3,
                                   tokens_per_s=b / sec, speedup_vs_original=base / sec,
                                   cache_bytes=info[label]["cache_bytes"], peak_rss_bytes=info[label]["peak_rss_bytes"])
                        results.append(row)
                        print(f"{t:>5} {b:>2} {label:22} {sec * 1e3:9.2f} {b / sec:8.1f} {base / sec:6.2f}x "
                              f"{row['cache_bytes'] / 2**20:10.1f} {row['peak_rss_bytes'] / 2**20:12.0f}")
    finally:
        for p in made:
            if os.path.exists(p):
                os.remove(p)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(onnxruntime=ort.__version__, threads=args.threads, steps=args.steps, rounds=args.rounds,
                           rewrite=REWRITE, results=results), fh, indent=1)
    return results


if __name__ == "__main__":
    main()
