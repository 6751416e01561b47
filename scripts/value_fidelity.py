"""Quality of the value cache types on SmolLM2-135M, end to end in onnxruntime (not a test).

One calibration at the README's recommended setting (m = 16, transforms, 4 sinks + 64 recent keys)
with float32 values; the float16 and int8-row models are rewrites of the same export whose
codebooks and transforms are copied from it, so the value type is the only difference. Each
held-out domain (models/text/eval: prose, code, technical; --tokens tokens each) is decoded
through the caches (chunks of --chunk tokens) by the original and the three LOOKAT models.
Printed and written to --json: perplexity, and for each LOOKAT model the mean next-token KL and
top-1 agreement against the original and against the float32-values LOOKAT model. Usage:
    .venv/bin/python scripts/value_fidelity.py [--tokens 2048] [--calib-tokens 16384] [--json out.json]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
sys.path.insert(0, os.path.join(ROOT, "python", "lookat"))
from decode import CacheDecoder  # noqa: E402
from lookat_testlib import session, tokenize  # noqa: E402

SMOL = os.path.join(ROOT, "models", "fixtures", "smollm2")
EXPORT = os.path.join(SMOL, "dyn18-eager-kv.onnx")
TOKENIZER = os.path.join(SMOL, "tokenizer.json")
REWRITE = ["--subspaces", "16", "--transform", "--sinks", "4", "--window", "64"]
BIN = os.path.join(ROOT, "target", "release")


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def decode_logprobs(path, ids, chunk):
    """Log-probabilities of every next token, decoding `ids` through the cache in chunks."""
    dec = CacheDecoder(session(path), max_length=len(ids) + 1)
    rows = [log_softmax(dec.step(ids[i:i + chunk])[0]) for i in range(0, len(ids) - 1, chunk)]
    return np.concatenate(rows)[: len(ids) - 1]


def compare(ref, other):
    kl = float(np.mean(np.sum(np.exp(ref) * (ref - other), -1)))
    top1 = float(np.mean(ref.argmax(-1) == other.argmax(-1)))
    return kl, top1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    made = []
    t0 = time.time()
    try:
        rw = os.path.join(SMOL, ".vf-rewritten-f32.onnx")
        made.append(rw)
        subprocess.run([os.path.join(BIN, "lookat-rewrite"), EXPORT, "-o", rw, *REWRITE, "--value-dtype", "f32"],
                       check=True, capture_output=True)
        models = {"float32": os.path.join(SMOL, ".vf-calibrated-f32.onnx")}
        made.append(models["float32"])
        calib = [os.path.join(ROOT, "models", "text", "calib", f"{d}.txt") for d in ("prose", "code", "technical")]
        subprocess.run([os.path.join(BIN, "lookat-calibrate"), "--original", EXPORT, "--rewritten", rw, "-o",
                        models["float32"], "--text", *calib, "--tokenizer", TOKENIZER, "--tokens", str(args.calib_tokens),
                        "--window", "2048", "--batch", "1", "--seed", "0", "--quiet"], check=True, capture_output=True)
        calibrated = onnx.load(models["float32"], load_external_data=False)
        learned = {i.name: i for i in calibrated.graph.initializer if i.name.startswith("lookat.")}
        for label, dtype in (("float16", "f16"), ("int8 rows", "i8")):
            path = os.path.join(SMOL, f".vf-calibrated-{dtype}.onnx")
            made.append(path)
            subprocess.run([os.path.join(BIN, "lookat-rewrite"), EXPORT, "-o", path, *REWRITE, "--value-dtype", dtype],
                           check=True, capture_output=True)
            m = onnx.load(path, load_external_data=False)
            for init in m.graph.initializer:
                if init.name in learned:
                    init.CopyFrom(learned[init.name])
            onnx.save(m, path)
            models[label] = path
        print(f"calibrated and rewritten in {time.time() - t0:.0f} s")
        domains = ["prose", "code", "technical"]
        texts = [os.path.join(ROOT, "models", "text", "eval", f"{d}.txt") for d in domains]
        results = []
        for domain, ids in zip(domains, tokenize(texts, TOKENIZER)):
            ids = ids[: args.tokens + 1]
            targets = ids[1:]
            ref = decode_logprobs(EXPORT, ids, args.chunk)
            nll = lambda lp: float(-np.mean(lp[np.arange(len(targets)), targets]))  # noqa: E731
            row = dict(domain=domain, tokens=len(targets), ppl_original=float(np.exp(nll(ref))), models={})
            lp = {label: decode_logprobs(path, ids, args.chunk) for label, path in models.items()}
            for label in models:
                kl_o, top_o = compare(ref, lp[label])
                kl_f, top_f = compare(lp["float32"], lp[label])
                row["models"][label] = dict(ppl=float(np.exp(nll(lp[label]))), kl_vs_original=kl_o, top1_vs_original=top_o,
                                            kl_vs_float32_values=kl_f, top1_vs_float32_values=top_f)
                print(f"{domain:9} {label:10} ppl {row['models'][label]['ppl']:7.3f} (original {row['ppl_original']:.3f}) "
                      f"KL vs original {kl_o:.5f} top-1 {top_o:.4f} | KL vs float32 values {kl_f:.6f} top-1 {top_f:.4f}")
            results.append(row)
        print(f"total {time.time() - t0:.0f} s")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(dict(rewrite=REWRITE, calib_tokens=args.calib_tokens, chunk=args.chunk, results=results,
                               seconds=time.time() - t0), fh, indent=1)
    finally:
        for p in made:
            if os.path.exists(p):
                os.remove(p)


if __name__ == "__main__":
    main()
