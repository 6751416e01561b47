#!/usr/bin/env python3
"""Check the committed SmolLM2-135M exports against PyTorch's recorded reference, in onnxruntime (root venv:
numpy + onnxruntime + onnx; no torch). Run models/smollm2_weights.py first (it makes weights.bin).

    .venv/bin/python models/check_smollm2.py [--tol 1e-3] [FILE.onnx ...]     (default: every file of the manifest)

For each export: onnxruntime opens it; the prompt of models/fixtures/smollm2/reference.json (its token ids) gives
the same top-20 next-token ids as PyTorch with |Δlogit| <= --tol, the same argmax at every prompt position, and the
same greedy 16-token continuation (exports with a cache decode one token per step from the returned cache).
Exit status 1 on any difference. check_export() is importable by tests.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DIR = os.path.join(HERE, "fixtures", "smollm2")


def session(path, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def greedy(sess, ids, n):
    """(logits of the prompt [S, V], n greedy token ids); with cache: prefill, then one token per step."""
    ins = {i.name: i for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    kv = any(k.startswith("past_key_values.") for k in ins)
    past = {k: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for k, i in ins.items()
            if k.startswith("past_key_values.")}
    seq, feed, p, first, out = list(ids), list(ids), 0, None, []
    for _ in range(n):
        x = np.array([feed if kv else seq], np.int64)
        s = x.shape[1]
        feeds = {"input_ids": x, "attention_mask": np.ones((1, p + s), np.int64),
                 "position_ids": np.arange(p, p + s, dtype=np.int64)[None]}
        feeds.update(past)
        res = dict(zip(names, sess.run(None, feeds)))
        if first is None:
            first = res["logits"][0]
        nxt = int(res["logits"][0, -1].argmax())
        out.append(nxt)
        seq.append(nxt)
        if kv:
            past = {k.replace("present.", "past_key_values."): v for k, v in res.items() if k.startswith("present.")}
            p += s
            feed = [nxt]
    return first, out


def check_export(path, ref, tol=1e-3):
    """A list of problems (empty when the export reproduces the reference)."""
    sess = session(path)
    logits, gen = greedy(sess, ref["prompt_ids"], len(ref["greedy_ids"]))
    last = logits[-1]
    problems = []
    top = [int(i) for i in np.argsort(-last, kind="stable")[:len(ref["top_ids"])]]
    if top != ref["top_ids"]:
        problems.append(f"top-{len(top)} ids {top} != {ref['top_ids']}")
    d = max(abs(float(last[i]) - v) for i, v in zip(ref["top_ids"], ref["top_logits"]))
    if not d <= tol:
        problems.append(f"max |dlogit| over the reference top ids {d:.2e} > {tol}")
    am = [int(r.argmax()) for r in logits]
    if am != [q["argmax"] for q in ref["positions"]]:
        problems.append(f"argmax per position {am} != {[q['argmax'] for q in ref['positions']]}")
    if gen != ref["greedy_ids"]:
        problems.append(f"greedy continuation {gen} != {ref['greedy_ids']}")
    return problems, d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    ref = json.load(open(os.path.join(DIR, "reference.json")))
    files = args.files or [os.path.join(ROOT, e["path"]) for e in json.load(open(os.path.join(DIR, "manifest.json")))["fixtures"]]
    if not os.path.exists(os.path.join(DIR, "weights.bin")):
        print(f"{os.path.join(DIR, 'weights.bin')} is missing: run .venv/bin/python models/smollm2_weights.py", file=sys.stderr)
        return 1
    bad = 0
    for f in files:
        t0 = time.time()
        problems, d = check_export(f, ref, args.tol)
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(f"{os.path.relpath(f, ROOT)}: max |dlogit| (top-20) {d:.1e}, {time.time() - t0:.1f} s: {status}", flush=True)
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
