#!/usr/bin/env python3
"""Key spectrum of a GPT-2 KV-cache ONNX export: how much of the key variance the top principal
components hold, per layer (per head, then averaged over heads; and with the heads pooled).

Keys are the present.{i}.key outputs for windows of calibration text (models/text/calib/*.txt). A collapsed
spectrum (top 8 of 64 components holding ~all variance) makes product quantization look too easy.

    models/.venv/bin/python models/key_spectrum.py --onnx models/fixtures/trained/dyn18-eager-kv.onnx
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DOMAINS = ("prose", "code", "technical")


def topk_fractions(x, ks):
    x = x - x.mean(0, keepdims=True)
    ev = np.linalg.eigvalsh(x.T @ x / max(1, x.shape[0] - 1))[::-1]
    ev = np.clip(ev, 0, None)
    return {str(k): float(ev[:k].sum() / ev.sum()) for k in ks}


def main():
    import onnxruntime as ort

    from build_corpus import tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", default=os.path.join(HERE, "fixtures", "trained", "dyn18-eager-kv.onnx"))
    ap.add_argument("--text-dir", default=os.path.join(HERE, "text", "calib"))
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--windows-per-domain", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tok = tokenizer()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    ins = sess.get_inputs()
    outs = [o.name for o in sess.get_outputs()]
    key_outs = [o for o in outs if o.startswith("present.") and o.endswith(".key")]
    keys = {o: [] for o in key_outs}
    for d in DOMAINS:
        ids = np.asarray(tok(open(os.path.join(args.text_dir, d + ".txt"), encoding="utf-8").read())["input_ids"],
                         dtype=np.int64)
        for s in np.linspace(0, ids.size - args.window, args.windows_per_domain).astype(int):
            x = ids[None, s : s + args.window]
            feeds = {"input_ids": x, "attention_mask": np.ones_like(x),
                     "position_ids": np.arange(x.shape[1], dtype=np.int64)[None, :]}
            for i in ins:
                if i.name.startswith("past_key_values."):
                    feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
            got = dict(zip(outs, sess.run(None, feeds)))
            for o in key_outs:
                keys[o].append(got[o][0])  # [H, T, D]
    ks = (4, 8, 16)
    res = {}
    for o in key_outs:
        k = np.concatenate(keys[o], axis=1)  # [H, N, D]
        per_head = [topk_fractions(k[h], ks) for h in range(k.shape[0])]
        res[o] = {
            "vectors_per_head": int(k.shape[1]), "head_size": int(k.shape[2]),
            "per_head_mean": {str(kk): float(np.mean([p[str(kk)] for p in per_head])) for kk in ks},
            "per_head_min": {str(kk): float(np.min([p[str(kk)] for p in per_head])) for kk in ks},
        }
        print(o, json.dumps(res[o]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"onnx": os.path.relpath(args.onnx, os.path.dirname(HERE)), "window": args.window,
                       "windows_per_domain": args.windows_per_domain, "result": res}, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
