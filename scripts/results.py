#!/usr/bin/env python3
"""End-to-end fidelity of LOOKAT on the real SmolLM2-135M (headline) and the trained GPT-2 fixture,
against scalar INT8 / INT4 per-channel keys run by the same op, for each quality lever (key window,
transforms, per-layer m), then the same calibrated models at the level of attention (lookat-eval):
writes docs/results/results.json, docs/RESULTS.md's tables and the plots. A benchmark, not a test:
`./scripts/results.sh` (under 30 minutes on the project's 2-core machine). `--calib-sweep` instead
measures calibration volume (16k / 64k / 256k tokens) and calibration window length into
docs/results/calib_sweep.json (about 20 minutes), which the page shows too.

Everything goes through the shipped tools and onnxruntime with the plugin: lookat-rewrite,
lookat-calibrate (its own forward passes and k-means), then the calibrated model and the original
decode the same held-out windows of each domain through their caches, fed 256 tokens per call
(LookatAttention scores a token by its position alone, so this equals token-by-token decoding up
to float summation order). Metrics per position: next-token negative log-likelihood of both models
(perplexity), top-1 agreement of their next-token predictions, KL(original || lookat) of the
next-token distributions; reported over the first 256, 1024 and 2048 positions of each window.

Bytes per token and kv head are counted honestly: codes (m bytes), the full-precision key window
((sinks + window)·D·value bytes per sequence, amortised over T) and, separately, the model's
constants (float32 codebooks K·D·4 and transforms 2·D²·4 per layer and kv head) amortised over one
sequence of T tokens (with a batch they amortise further).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from lookat_testlib import CONTRACT, plugin_path, tokenize, tool  # noqa: E402

BIN = ROOT / "target" / "release"
CALIB = [ROOT / f"models/text/calib/{d}.txt" for d in ("prose", "code", "technical")]
DOMAINS = ["prose", "code", "technical"]
EVAL = [ROOT / f"models/text/eval/{d}.txt" for d in DOMAINS]
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def log(msg):
    print(f"[results {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(args):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc.stdout


def session(path, plugin):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    if plugin:
        opts.register_custom_ops_library(plugin_path())
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def decode_logprobs(sess, ids, chunk=256):
    """Log-softmax of the next-token logits at every position of `ids`, feeding `chunk` tokens per
    call through the model's cache I/O."""
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name: i for i in sess.get_inputs()}
    past = {
        n: np.zeros((1, i.shape[1], 0, i.shape[3]), DTYPES[i.type]) for n, i in inputs.items() if n.startswith("past_key_values.")
    }
    rows, done = [], 0
    while done < len(ids):
        fed = ids[done : done + chunk][None]
        feeds = {"input_ids": fed, **past}
        if "attention_mask" in inputs:
            feeds["attention_mask"] = np.ones((1, done + fed.shape[1]), np.int64)
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(done, done + fed.shape[1], dtype=np.int64)[None]
        outs = dict(zip(names, sess.run(None, feeds)))
        logits = outs["logits"][0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        rows.append((logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32))
        past = {n.replace("present.", "past_key_values.", 1): v for n, v in outs.items() if n.startswith("present.")}
        done += fed.shape[1]
    return np.concatenate(rows)


def compare(orig, look, ids):
    """Per-position metrics: (nll original, nll lookat, top-1 agreement, KL)."""
    target = ids[1:]
    o, l = orig[:-1], look[:-1]
    pos = np.arange(len(target))
    kl = (np.exp(o) * (o - l)).sum(axis=1)
    return (-o[pos, target], -l[pos, target], (o.argmax(1) == l.argmax(1)).astype(np.float64), kl)


def summarise(per_domain, lengths):
    """Means over the first L positions of every domain's window, for each L."""
    out = {}
    for length in lengths:
        parts = [tuple(a[: length - 1] for a in m) for m in per_domain.values()]
        nll_o = np.concatenate([p[0] for p in parts])
        nll_l = np.concatenate([p[1] for p in parts])
        out[length] = {
            "ppl_original": float(np.exp(nll_o.mean())),
            "ppl": float(np.exp(nll_l.mean())),
            "ppl_ratio": float(np.exp(nll_l.mean() - nll_o.mean())),
            "top1": float(np.concatenate([p[2] for p in parts]).mean()),
            "kl": float(np.concatenate([p[3] for p in parts]).mean()),
            "per_domain_kl": {d: float(m[3][: length - 1].mean()) for d, m in per_domain.items()},
        }
    return out


def copy_constants(src, dst_rewritten, out):
    """The calibrated codebooks and transforms of `src` into another rewrite of the same geometry
    (a different key window does not change them)."""
    calibrated = {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer}
    model = onnx.load(str(dst_rewritten), load_external_data=False)
    for t in model.graph.initializer:
        if t.name.startswith("lookat."):
            t.CopyFrom(calibrated[t.name])
    onnx.save(model, str(out))


class Bench:
    def __init__(self, name, original, tokenizer, eval_len, calib_window, head_dim, kv_heads, layers, work):
        self.name, self.original, self.tokenizer = name, original, tokenizer
        self.eval_len, self.calib_window, self.work = eval_len, calib_window, work
        self.d, self.kv, self.layers = head_dim, kv_heads, layers
        self.calibrated = {}
        # Calibrations that differ only in m, K, transforms or grids share one set of forward
        # passes (lookat-calibrate --keys-cache); the directory is removed at the end.
        self.keys_cache = ROOT / "out" / f"results-keys-{name}"
        ids = tokenize(EVAL, tokenizer)
        self.windows = {d: t[:eval_len] for d, t in zip(DOMAINS, ids)}
        for d, t in self.windows.items():
            assert len(t) == eval_len, f"{d}: only {len(t)} tokens"
        log(f"{name}: original model on {len(DOMAINS)} x {eval_len} held-out tokens")
        sess = session(original, plugin=False)
        self.reference = {d: decode_logprobs(sess, t) for d, t in self.windows.items()}

    def path(self, stem):
        return self.original.parent / f".results-{self.name}-{stem}.onnx"

    def calibrate(self, m, k=256, transform=None, grid=None, tokens=16384, budget=None, rewrite_extra=(), calib_window=None):
        calib_window = calib_window or self.calib_window
        key = (m, k, transform, grid, tokens, budget, tuple(rewrite_extra), calib_window)
        if key in self.calibrated:
            return self.calibrated[key]
        stem = f"m{m}-k{k}-{transform or 'none'}-{grid or 'kmeans'}-{tokens}-w{calib_window}" + (f"-budget{budget}" if budget else "")
        rw, cal = self.path(stem + "-rw"), self.path(stem + "-cal")
        args = ["--subspaces", m, "--centroids", k, *rewrite_extra] + (["--transform"] if transform else [])
        run([tool("lookat-rewrite"), self.original, "-o", rw, *args])
        calib = ["--transform", transform] if transform else []
        calib += ["--grid", grid] if grid else []
        calib += ["--budget", budget] if budget else []
        tok = ["--tokenizer", self.tokenizer] if self.tokenizer else []
        start = time.time()
        run([tool("lookat-calibrate"), "--original", self.original, "--rewritten", rw, "-o", cal, "--text", *CALIB, *tok,
             "--tokens", tokens, "--window", calib_window, "--batch", 1 if calib_window > 1024 else 4,
             "--seed", 0, "--quiet", "--keys-cache", self.keys_cache, *calib])
        seconds = time.time() - start
        rw.unlink()
        self.calibrated[key] = (cal, seconds)
        log(f"{self.name}: calibrated {stem} in {seconds:.0f} s")
        return self.calibrated[key]

    def evaluate(self, label, m, k=256, transform=None, grid=None, tokens=16384, sinks=0, window=0, value_dtype="f32",
                 budget=None):
        cal, calib_seconds = self.calibrate(**calibration(m, k, transform, grid, tokens, sinks, window, value_dtype, budget))
        model = cal
        if not budget and (sinks or window or value_dtype != "f32"):
            model = self.path(f"{label}")
            rw = self.path(f"{label}-rw")
            args = ["--subspaces", m, "--centroids", k, "--sinks", sinks, "--window", window, "--value-dtype", value_dtype]
            run([tool("lookat-rewrite"), self.original, "-o", rw, *args] + (["--transform"] if transform else []))
            copy_constants(cal, rw, model)
            rw.unlink()
        sess = session(model, plugin=True)
        per_domain = {d: compare(self.reference[d], decode_logprobs(sess, t), t) for d, t in self.windows.items()}
        del sess
        if model != cal:
            model.unlink()
        # Codes per key and kv head: m, or with --budget the mean of the layers' m.
        books = [t for t in onnx.load(str(cal), load_external_data=False).graph.initializer
                 if t.name.startswith(CONTRACT["codebooks_prefix"])]
        codes = sum(t.dims[0] * t.dims[1] for t in books) / sum(t.dims[0] for t in books)
        value_bytes = 2 if value_dtype == "f16" else 4
        key_window = (sinks + window) * self.d * value_bytes
        constants = (0 if grid else k * self.d * 4) + (2 * self.d * self.d * 4 if transform else 0)
        lengths = [n for n in (256, 1024, 2048, 4096) if n <= self.eval_len]
        row = {
            "label": label, "subspaces": m, "centroids": k, "transform": transform, "grid": grid, "budget": budget,
            "layer_subspaces": [int(t.dims[1]) for t in books],
            "calib_tokens": tokens, "calib_seconds": round(calib_seconds, 1), "sinks": sinks, "window": window,
            "value_dtype": value_dtype,
            "bytes_per_token_kv_head": {
                # Scalar rows: what a packed INT8 / INT4 cache stores (this op keeps one byte per code).
                str(t): {"codes": codes if grid is None else m * (8 if grid == "int8" else 4) / 8,
                         "key_window": key_window / t, "constants": constants / t} for t in lengths
            },
            "metrics": {str(k2): v for k2, v in summarise(per_domain, lengths).items()},
        }
        last = row["metrics"][str(lengths[-1])]
        log(f"{self.name} {label}: T={lengths[-1]} ppl {last['ppl_original']:.2f} -> {last['ppl']:.2f}, "
            f"top-1 {last['top1']:.4f}, KL {last['kl']:.4f}")
        return row

    def attention(self, models, lengths):
        """lookat-eval's attention-level metrics (every layer and query head; fp16, INT8 and INT4
        keys built in; each scheme also with the 4 + 64 key window) for calibrated `models`:
        (label, settings as for `evaluate`), calibrated here unless already."""
        specs = []
        for label, kw in models:
            cal, _ = self.calibrate(**calibration(**kw))
            specs += ["--model", f"{label}={cal}"]
        out = ROOT / "out" / f"results-attention-{self.name}"
        tok = ["--tokenizer", self.tokenizer] if self.tokenizer else []
        start = time.time()
        run([tool("lookat-eval"), "--original", self.original, *tok, "--eval-text", *EVAL, *specs,
             "--lengths", *lengths, "--queries", 16, "--sinks", 4, "--window", 64, "--threads", 2, "--quiet", "--out", out])
        data = json.loads((out / "results.json").read_text())
        shutil.rmtree(out)
        data["wall_seconds"] = round(time.time() - start, 1)
        log(f"{self.name}: attention-level metrics of {len(data['rows'])} schemes in {data['wall_seconds']:.0f} s")
        return data

    def run(self, plan, attention=(), lengths=()):
        """Evaluates every (label, settings) of `plan`, then lookat-eval on the `attention`
        models at `lengths`; removes the calibrated models after."""
        try:
            rows = [self.evaluate(label, **kw) for label, kw in plan]
            return rows, (self.attention(attention, lengths) if attention else None)
        finally:
            self.cleanup()

    def cleanup(self):
        for cal, _ in self.calibrated.values():
            cal.unlink(missing_ok=True)
        for f in self.keys_cache.glob("keys-*.bin"):
            f.unlink()


def calibration(m, k=256, transform=None, grid=None, tokens=16384, sinks=0, window=0, value_dtype="f32", budget=None,
                calib_window=None):
    """`Bench.calibrate`'s arguments for a row's settings: the key window and value type only
    matter to --budget, which reshapes each layer's codebooks and codes cache, so that row
    calibrates the very rewrite it evaluates; the others share one calibration per geometry."""
    extra = ("--sinks", sinks, "--window", window, "--value-dtype", value_dtype) if budget else ()
    return dict(m=m, k=k, transform=transform, grid=grid, tokens=tokens, budget=budget, rewrite_extra=extra,
                calib_window=calib_window)


def smollm2_bench():
    smol = ROOT / "models/fixtures/smollm2"
    return Bench("smollm2", smol / "dyn18-eager-kv.onnx", smol / "tokenizer.json", eval_len=2048, calib_window=2048,
                 head_dim=64, kv_heads=3, layers=30, work=smol)


RECOMMENDED = dict(m=16, transform="fsa", value_dtype="f16", sinks=4, window=64)


def smollm2_rows():
    b = smollm2_bench()
    w = dict(sinks=4, window=64)
    plan = [
        # Scalar per-channel baselines, run by the same op (m = D, uniform grid codebooks).
        ("INT8 per-channel", dict(m=64, k=256, grid="int8")),
        ("INT4 per-channel", dict(m=64, k=16, grid="int4")),
        ("INT4 per-channel + window", dict(m=64, k=16, grid="int4", **w)),
        # The paper's method, then each lever.
        ("PQ m=16", dict(m=16)),
        ("PQ m=8", dict(m=8)),
        ("PQ m=4", dict(m=4)),
        ("PQ m=16 + window", dict(m=16, **w)),
        ("PQ m=8 + window", dict(m=8, **w)),
        ("PQ m=16 + pca + window", dict(m=16, transform="pca", **w)),
        ("PQ m=16 + fsa", dict(m=16, transform="fsa")),
        ("PQ m=16 + fsa + window", dict(m=16, transform="fsa", **w)),
        ("PQ m=8 + fsa + window", dict(m=8, transform="fsa", **w)),
        ("PQ m=4 + fsa + window", dict(m=4, transform="fsa", **w)),
        ("PQ m=8 + fsa + window 128", dict(m=8, transform="fsa", sinks=4, window=128)),
        ("PQ m=16 + fsa + window, f16 cache", dict(m=16, transform="fsa", value_dtype="f16", **w)),
        # lookat-calibrate --budget: each layer's m (2, 4, 8 or 16) from its measured score error.
        ("PQ budget 12 + fsa + window, f16 cache", dict(m=16, transform="fsa", budget=12, value_dtype="f16", **w)),
    ]
    # The same calibrations at the level of attention itself (lookat-eval adds "+ window").
    attention = [
        ("PQ m=16", dict(m=16)),
        ("PQ m=8", dict(m=8)),
        ("PQ m=4", dict(m=4)),
        ("PQ m=16 + pca", dict(m=16, transform="pca")),
        ("PQ m=16 + fsa", dict(m=16, transform="fsa")),
        ("PQ m=8 + fsa", dict(m=8, transform="fsa")),
        ("PQ m=4 + fsa", dict(m=4, transform="fsa")),
        ("PQ budget 12 + fsa + window", dict(m=16, transform="fsa", budget=12, value_dtype="f16", **w)),
    ]
    return b.run(plan, attention, lengths=(256, 1024, 2048))


def calibration_sweep():
    """What calibration costs and buys (`./scripts/results.sh --calib-sweep`, apart from the main
    run because 256k tokens of forward passes alone take longer than its 30 minutes): the
    recommended setting end to end at 16k, 64k and 256k calibration tokens; and, at the level of
    attention, calibration windows of 2048 against 4096 tokens on contexts of 2048 and 4096."""
    b = smollm2_bench()
    plan = [(f"{label} calibration tokens", dict(RECOMMENDED, tokens=n)) for label, n in
            (("16k", 16384), ("64k", 65536), ("256k", 262144))]
    attention = [("PQ m=16 + fsa, calibration windows of 2048", dict(m=16, transform="fsa")),
                 ("PQ m=16 + fsa, calibration windows of 4096", dict(m=16, transform="fsa", calib_window=4096))]
    # The held-out windows hold 2048 tokens end to end; lookat-eval reads 4096 of each file.
    return b.run(plan, attention, lengths=(2048, 4096))


def gpt2_rows():
    fx = ROOT / "models/fixtures/trained/dyn18-eager-kv.onnx"
    b = Bench("gpt2", fx, None, eval_len=1024, calib_window=256, head_dim=64, kv_heads=4, layers=2, work=fx.parent)
    plan = [
        ("INT4 per-channel", dict(m=64, k=16, grid="int4", tokens=50000)),
        ("PQ m=4", dict(m=4, tokens=50000)),
        ("PQ m=8", dict(m=8, tokens=50000)),
        ("PQ m=4 + fsa + window", dict(m=4, transform="fsa", sinks=4, window=64, tokens=50000)),
        ("PQ m=8 + fsa + window", dict(m=8, transform="fsa", sinks=4, window=64, tokens=50000)),
    ]
    attention = [(label, dict(m=m, transform=tr, tokens=50000))
                 for label, m, tr in (("PQ m=4", 4, None), ("PQ m=8", 8, None), ("PQ m=4 + fsa", 4, "fsa"),
                                      ("PQ m=8 + fsa", 8, "fsa"))]
    return b.run(plan, attention, lengths=(256, 1024))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--calib-sweep", action="store_true",
                    help="instead of the main run: calibration tokens (16k, 64k, 256k) and calibration window length "
                         "(writes calib_sweep.json; about 20 minutes)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    import platform

    result = {
        "generated_by": "./scripts/results.sh" + (" --calib-sweep" if args.calib_sweep else "") + " (scripts/results.py)",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}",
        "onnxruntime": ort.__version__,
        "contract": {"domain": CONTRACT["domain"], "op": CONTRACT["op_name"]},
    }
    if args.calib_sweep:
        result["smollm2"], result["smollm2_attention"] = calibration_sweep()
        name = "calib_sweep.json"
    else:
        result["smollm2"], result["smollm2_attention"] = smollm2_rows()
        result["gpt2_fixture"], result["gpt2_attention"] = gpt2_rows()
        name = "results.json"
    result["seconds"] = round(time.time() - start)
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / name)
    log(f"wrote {out / name} in {result['seconds']} s")


if __name__ == "__main__":
    main()
