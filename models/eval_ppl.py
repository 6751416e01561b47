#!/usr/bin/env python3
"""Held-out perplexity of a GPT-2 ONNX export on models/text/eval/*.txt, against a unigram baseline.

The text of each domain is tokenized with the GPT-2 tokenizer and cut into non-overlapping windows of
--window tokens; every token after the first of its window is scored (mean negative log-likelihood, nats).
The unigram baseline (add-one smoothed counts of the *training* tokens, models/work/data/train_*.bin) is
scored on exactly the same tokens. Runs the committed ONNX file in onnxruntime, so the figure is the
fixture's own:

    models/.venv/bin/python models/eval_ppl.py --onnx models/fixtures/trained/dyn18-eager-nokv.onnx
"""
import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DOMAINS = ("prose", "code", "technical")
VOCAB = 50257


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main():
    import onnxruntime as ort

    from build_corpus import tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", default=os.path.join(HERE, "fixtures", "trained", "dyn18-eager-nokv.onnx"))
    ap.add_argument("--text-dir", default=os.path.join(HERE, "text", "eval"))
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=None, help="per domain (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    tok = tokenizer()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["input_ids", "attention_mask", "position_ids"], "use an export without KV cache"
    counts = np.ones(VOCAB, dtype=np.float64)
    have_uni = True
    for d in DOMAINS:
        p = os.path.join(HERE, "work", "data", f"train_{d}.bin")
        if not os.path.exists(p):
            have_uni = False
            break
        counts += np.bincount(np.fromfile(p, dtype=np.uint16), minlength=VOCAB)[:VOCAB]
    uni_logp = np.log(counts / counts.sum())
    res = {}
    tot_nll = tot_uni = tot_n = 0.0
    for d in DOMAINS:
        ids = np.asarray(tok(open(os.path.join(args.text_dir, d + ".txt"), encoding="utf-8").read())["input_ids"],
                         dtype=np.int64)
        if args.max_tokens:
            ids = ids[: args.max_tokens]
        nll = uni = n = 0.0
        for s in range(0, ids.size - 1, args.window):
            w = ids[s : s + args.window]
            if w.size < 2:
                continue
            x = w[None, :]
            logits = sess.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x),
                                           "position_ids": np.arange(w.size, dtype=np.int64)[None, :]})[0][0]
            lp = log_softmax(logits[:-1].astype(np.float64))
            tgt = w[1:]
            nll += -lp[np.arange(tgt.size), tgt].sum()
            uni += -uni_logp[tgt].sum()
            n += tgt.size
        res[d] = {"tokens_scored": int(n), "loss": nll / n, "ppl": math.exp(nll / n)}
        if have_uni:
            res[d].update(unigram_loss=uni / n, unigram_ppl=math.exp(uni / n))
        tot_nll += nll
        tot_uni += uni
        tot_n += n
        print(d, json.dumps(res[d]), flush=True)
    res["all"] = {"tokens_scored": int(tot_n), "loss": tot_nll / tot_n, "ppl": math.exp(tot_nll / tot_n)}
    if have_uni:
        res["all"].update(unigram_loss=tot_uni / tot_n, unigram_ppl=math.exp(tot_uni / tot_n))
    print("all", json.dumps(res["all"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"onnx": os.path.relpath(args.onnx, os.path.dirname(HERE)), "window": args.window,
                       "text_dir": os.path.relpath(args.text_dir, os.path.dirname(HERE)), "result": res}, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
