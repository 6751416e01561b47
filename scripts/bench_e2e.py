"""Benchmark (not a test): end-to-end greedy decode throughput of the ORIGINAL trained GPT-2 fixture
against its CALIBRATED LookatAttention rewrite (out/demo/calibrated.onnx from scripts/demo.sh), both
through onnxruntime sessions in this one process, same thread setting, measured side by side.

For each context length T: prefill T prompt tokens (random ids, the same for both models), then time
--steps decode steps, each rebinding the present caches as the next pasts through IOBinding
(OrtValues, no Python copies; only the logits come back to numpy). The original decodes greedily; the
calibrated model is teacher-forced with the original's tokens, and its argmax is compared to the
original's (next-token agreement). Prints median per-token latency, tokens/s, the calibrated/original
ratio, cache bytes per token (from the actual present outputs) and rough MAC / byte shares of the
attention in a decode step. Usage:
    .venv/bin/python scripts/bench_e2e.py [--threads 2] [--steps 32] [--contexts 256,960] [--json out.json]
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from lookat_testlib import plugin_path, session  # noqa: E402

ORIGINAL = os.path.join(ROOT, "models", "fixtures", "trained", "dyn18-eager-kv.onnx")
CALIBRATED = os.path.join(ROOT, "out", "demo", "calibrated.onnx")
ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(uint8)": 1, "tensor(int8)": 1, "tensor(int64)": 8}


def prompt_ids(n, vocab, seed):
    """n random token ids: throughput does not depend on the text, and held-out text quality is
    measured by lookat-generate and scripts/results.sh."""
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int64), f"random ids (seed {seed})"


# ---- sessions and one IOBinding step -----------------------------------------------------------

class Decoder:
    """One model's session, its cache I/O names and an empty cache of the right dtypes."""

    def __init__(self, name, path, threads):
        self.name = name
        self.sess = session(path, threads)
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.present = [n.replace("past_key_values.", "present.") for n in self.past]
        assert self.outputs[0] == "logits" and set(self.present) <= set(self.outputs), (self.inputs, self.outputs)
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
        self.empty = {}
        for i in self.sess.get_inputs():
            if i.name in self.past:
                shape = [1, i.shape[1], 0, i.shape[3]]
                self.empty[i.name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, types[i.type]))

    def step(self, ids, cache, past_len):
        """Run ids (1-D int64) after a cache of past_len tokens; returns (logits numpy [S, V], new cache)."""
        s = len(ids)
        b = self.sess.io_binding()
        feeds = {"input_ids": ids.reshape(1, s), "attention_mask": np.ones((1, past_len + s), np.int64),
                 "position_ids": np.arange(past_len, past_len + s, dtype=np.int64).reshape(1, s)}
        for k, v in feeds.items():
            if k in self.inputs:
                b.bind_cpu_input(k, v)
        for n in self.past:
            b.bind_ortvalue_input(n, cache[n])
        for n in ["logits"] + self.present:
            b.bind_output(n, "cpu")
        self.sess.run_with_iobinding(b)
        outs = b.get_outputs()
        new = {p: o for p, o in zip(self.past, outs[1:])}
        return outs[0].numpy()[0], new

    @staticmethod
    def cache_bytes(cache):
        return sum(int(np.prod(v.shape())) * ITEMSIZE[v.data_type()] for v in cache.values())


def run_once(dec, prompt, forced, steps):
    """Prefill, then `steps` decode steps. forced None: greedy (returns its tokens); else feed forced[i].
    Returns (prefill_s, per-step seconds, argmax per position incl. the prefill's, cache bytes/token)."""
    t0 = time.perf_counter()
    logits, cache = dec.step(prompt, dec.empty, 0)
    prefill = time.perf_counter() - t0
    preds = [int(np.argmax(logits[-1]))]
    times = []
    past = len(prompt)
    for i in range(steps):
        tok = preds[-1] if forced is None else forced[i]
        t0 = time.perf_counter()
        logits, cache = dec.step(np.array([tok], np.int64), cache, past)
        preds.append(int(np.argmax(logits[-1])))
        times.append(time.perf_counter() - t0)
        past += 1
    return prefill, times, preds, Decoder.cache_bytes(cache) / past


def shares(m, t):
    """Approximate per-decode-token MACs and bytes read of graph `m` (weights not loaded): the weights vs
    the attention over t cached tokens."""
    weights = sum(int(np.prod(i.dims)) * 4 for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    layers = sum(1 for n in dims if n.startswith("past_key_values.") and n.endswith(".key"))
    h, d = dims["past_key_values.0.key"][1], dims["past_key_values.0.key"][3]
    vocab = [x.dim_value for x in m.graph.output[0].type.tensor_type.shape.dim][2]
    e = h * d
    lm = e * vocab
    blocks = layers * 12 * e * e  # qkv 3E², out 1E², MLP 8E² (GPT-2, MLP width 4E)
    attn = layers * h * t * d * 2  # q·K and p·V
    return dict(lm_head_macs=lm, block_linear_macs=blocks, attention_macs=attn,
                attention_mac_share=attn / (lm + blocks + attn), weight_bytes=weights,
                layers=layers, heads=h, head_dim=d, vocab=vocab)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32, help="decode steps per run (default 32)")
    ap.add_argument("--contexts", default="256,960", help="prompt lengths, comma separated (default 256,960)")
    ap.add_argument("--reps", type=int, default=8, help="prefill+decode runs per model and context (default 8)")
    ap.add_argument("--original", default=ORIGINAL)
    ap.add_argument("--calibrated", default=CALIBRATED)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    if not os.path.isfile(args.calibrated):
        sys.exit(f"bench_e2e: calibrated model {args.calibrated} is missing: run ./scripts/demo.sh first")
    if not os.path.isfile(args.original):
        sys.exit(f"bench_e2e: original model {args.original} is missing")
    try:
        plugin_path()
    except FileNotFoundError as e:
        sys.exit(f"bench_e2e: {e}")
    n_pos = 1024
    if max(contexts) + args.steps > n_pos:
        sys.exit(f"bench_e2e: context {max(contexts)} + {args.steps} steps exceeds n_positions = {n_pos}")

    orig = Decoder("original", args.original, args.threads)
    cal = Decoder("calibrated", args.calibrated, args.threads)
    graph = onnx.load(args.original, load_external_data=False)
    sh0 = shares(graph, 0)
    ids, source = prompt_ids(max(contexts), sh0["vocab"], args.seed)
    print(f"onnxruntime {ort.__version__}, threads {args.threads}; {sh0['layers']} layers, {sh0['heads']} heads, "
          f"head dim {sh0['head_dim']}, vocab {sh0['vocab']}; prompt: {source}")
    nodes = {"o": len(graph.graph.node), "c": len(onnx.load(args.calibrated, load_external_data=False).graph.node)}
    print(f"original   {os.path.relpath(args.original, ROOT)} ({nodes['o']} nodes)\n"
          f"calibrated {os.path.relpath(args.calibrated, ROOT)} ({nodes['c']} nodes)")

    # Warm-up: one short prefill + a few steps per model.
    for dec in (orig, cal):
        run_once(dec, ids[:32], None, 4)

    results = []
    hdr = (f"\n{'T':>5} {'model':10} {'prefill ms':>10} {'ms/token':>9} {'tok/s':>8} {'ratio':>6} "
           f"{'cache B/tok':>11} {'agree':>7}")
    print(hdr)
    for t in contexts:
        prompt = ids[:t]
        times = {"original": [], "calibrated": []}
        prefills = {"original": [], "calibrated": []}
        agree = None
        for rep in range(args.reps):
            # Interleaved: the original decodes greedily, then the calibrated model replays its tokens.
            p, st, ref, bpt_o = run_once(orig, prompt, None, args.steps)
            prefills["original"].append(p)
            times["original"] += st
            p, st, got, bpt_c = run_once(cal, prompt, ref[:-1], args.steps)
            prefills["calibrated"].append(p)
            times["calibrated"] += st
            if rep == 0:
                # Position 0 is the prefill's prediction; 1.. are the teacher-forced decode steps.
                agree = sum(a == b for a, b in zip(ref, got)) / len(ref)
                first_diff = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), None)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["original"] / med["calibrated"]
        sh = shares(graph, t + args.steps // 2)
        cache_mid = bpt_o * (t + args.steps // 2)
        row = dict(context=t, steps=args.steps, reps=args.reps,
                   original=dict(prefill_ms=1e3 * statistics.median(prefills["original"]), ms_per_token=1e3 * med["original"],
                                 tokens_per_s=1 / med["original"], cache_bytes_per_token=bpt_o),
                   calibrated=dict(prefill_ms=1e3 * statistics.median(prefills["calibrated"]), ms_per_token=1e3 * med["calibrated"],
                                   tokens_per_s=1 / med["calibrated"], cache_bytes_per_token=bpt_c),
                   speedup_calibrated_vs_original=ratio, next_token_agreement=agree, first_disagreement_step=first_diff,
                   original_greedy_tokens=ref, graph_nodes=nodes, attention_mac_share=sh["attention_mac_share"],
                   cache_byte_share_original=cache_mid / (cache_mid + sh["weight_bytes"]))
        results.append(row)
        for k in ("original", "calibrated"):
            r = row[k]
            print(f"{t:>5} {k:10} {r['prefill_ms']:10.1f} {r['ms_per_token']:9.3f} {r['tokens_per_s']:8.1f} "
                  f"{(ratio if k == 'calibrated' else 1.0):5.2f}x {r['cache_bytes_per_token']:11.0f} "
                  f"{(f'{agree:7.1%}' if k == 'calibrated' else ''):>7}")
    print(f"\nratio = tok/s calibrated / tok/s original (>1: calibrated faster); agree = next-token argmax "
          f"agreement over the prefill + {args.steps} teacher-forced steps (first run).")
    print(f"Work per decode token of this fixture: the LM head is {sh0['lm_head_macs'] / 1e6:.1f}M MACs "
          f"and the blocks' linears {sh0['block_linear_macs'] / 1e6:.1f}M, and {sh0['weight_bytes'] / 2**20:.0f} MiB of "
          f"fp32 weights are read, vs the attention:")
    for r in results:
        t = r["context"]
        print(f"  T={t:<5} attention {shares(graph, t)['attention_macs'] / 1e6:.2f}M MACs "
              f"({r['attention_mac_share']:.1%} of MACs; LOOKAT speeds up only its q·K half), original KV cache "
              f"{r['original']['cache_bytes_per_token'] * t / 2**20:.1f} MiB ({r['cache_byte_share_original']:.1%} of bytes read)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(onnxruntime=ort.__version__, threads=args.threads, prompt=source,
                           original=args.original, calibrated=args.calibrated, flops=sh0, results=results), fh, indent=1)
    return results


if __name__ == "__main__":
    main()
