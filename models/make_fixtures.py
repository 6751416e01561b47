#!/usr/bin/env python3
"""Regenerate lookat's committed ONNX fixtures and models/manifest.json.

    models/.venv/bin/python models/make_fixtures.py [--trained models/work/train/hf] [--only tiny|tiny_llama|trained]

* tiny random-initialised GPT-2s (tiny.py) -> models/fixtures/tiny/<config>/<variant>.onnx, self-contained
* tiny random-initialised Llamas (tiny.py, export_llama.py; RoPE, grouped-query attention) ->
  models/fixtures/tiny/tiny_llama_<config>/<variant>.onnx, self-contained (--only tiny_llama)
* the trained small GPT-2 (train.py's final checkpoint) -> models/fixtures/trained/<variant>.onnx, all sharing
  models/fixtures/trained/weights.bin (share_weights.py; deduplicated, 4096-aligned external data)

Every file is exported by export.py, checked against PyTorch in onnxruntime (max |Δlogit|, max |Δ present key|
on (batch, length, past) cases incl. a left-padded one), re-checked after the external-data rewrite, checked
with onnx.checker.check_model(path, full_check=True), and described in the manifest.
"""
import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import shutil
import sys

import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_patterns  # noqa: E402
import export  # noqa: E402
import share_weights  # noqa: E402
import tiny  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")

TRAINED_VARIANTS = [
    # dynamo first: its lm_head.weight holds the embedding's bytes untransposed
    "dyn18-eager-kv", "dyn18-sdpa-kv", "dyn23-eager-kv", "dyn23-sdpa-kv",
    "ts17-eager-kv", "ts17-sdpa-kv", "ts14-eager-kv",
    "dyn18-eager-nokv", "ts17-eager-nokv",
]
# tiny random Llamas (tiny.TINY_LLAMA_CONFIGS): every variant that exports for the first, a few for the others
TINY_LLAMA_VARIANTS = {
    "tiny_llama_l2_q4_kv2_d16": ["ts17-eager-kv", "ts17-sdpa-kv", "dyn18-eager-kv", "dyn18-sdpa-kv",
                                 "dyn23-eager-kv", "dyn23-sdpa-kv", "ts17-eager-nokv", "dyn23-sdpa-nokv",
                                 "dyn23-sdpagqa-kv"],
    "tiny_llama_l1_q6_kv2_d64": ["ts17-eager-kv", "dyn23-sdpa-kv"],
    "tiny_llama_l1_q4_kv1_d32": ["ts17-sdpa-kv", "dyn18-eager-kv"],
}
TINY_VARIANTS = {
    "tiny_l3_h4_d16": ["ts14-eager-kv", "ts14-sdpa-kv", "ts17-eager-kv", "ts17-sdpa-kv", "dyn18-eager-kv",
                       "dyn18-sdpa-kv", "dyn23-eager-kv", "dyn23-sdpa-kv", "ts17-eager-nokv", "dyn23-sdpa-nokv"],
    "tiny_l2_h12_d8": ["ts17-eager-kv", "dyn23-sdpa-kv"],
    "tiny_l1_h2_d64": ["ts14-sdpa-kv", "dyn18-eager-kv"],
}


def rel(p):
    return os.path.relpath(p, ROOT)


def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def attention_summary(path):
    """op_types on the path from the Concat that makes present.0.key (or, without a cache, from the
    Split of the fused QKV projection) to the first Softmax / Attention, plus an op_type histogram."""
    m = onnx.load(path, load_external_data=False)
    prod = {o: n for n in m.graph.node for o in n.output}
    cons = collections.defaultdict(list)
    for n in m.graph.node:
        for i in n.input:
            cons[i].append(n)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    llama = attention_patterns.llama_block(path) if attention_patterns.is_llama(path) else None
    start = prod.get("present.0.key")
    if start is None and llama is not None:  # Llama without cache: from the key projection
        start = prod[llama["projection_outputs"]["k"]]
    if start is None:
        start = next(n for n in m.graph.node if n.op_type == "Split")
    # BFS over consumers from start to the first Softmax/Attention
    prev = {id(start): None}
    byid = {id(start): start}
    q = collections.deque([start])
    end = None
    while q:
        n = q.popleft()
        if n.op_type in ("Softmax", "Attention") and n is not start:
            end = n
            break
        for o in n.output:
            for c in cons[o]:
                if id(c) not in prev:
                    prev[id(c)] = id(n)
                    byid[id(c)] = c
                    q.append(c)
    path_ops = []
    k = id(end) if end is not None else None
    while k is not None:
        path_ops.append(byid[k].op_type)
        k = prev[k]
    path_ops.reverse()
    # graph outputs of the fused QKV split feeding the key path, for orientation
    out = {"key_path_op_types": path_ops, "nodes": len(m.graph.node),
           "op_types": dict(sorted(hist.items(), key=lambda kv: -kv[1])),
           "has_onnx_attention_node": hist.get("Attention", 0) > 0}
    if llama is not None:
        # Llama: the layer-0 paths from the q/k/v projections through RoPE, the cache Concat and repeat_kv
        out["llama_key_path"] = llama["key_path"]
        out["llama_query_path"] = llama["query_path"]
        out["llama_value_path"] = llama["value_path"]
    return out


def check(path):
    onnx.checker.check_model(path, full_check=True)
    export.ort_session(path)


def entry(model_name, variant, path, par, v, cfg, notes, external):
    ins, outs = export.io_spec(path)
    return {
        "path": rel(path), "model": model_name, "variant": variant,
        "exporter": v["exporter"], "opset": v["opset"], "attn_implementation": v["attn"], "kv_cache": v["kv_cache"],
        "external_data": rel(external) if external else None,
        "postprocess": notes,
        "config": cfg if isinstance(cfg, dict) else export.config_summary(cfg),
        "inputs": ins, "outputs": outs,
        "parity": par,
        "max_abs_dlogit": max(e["max_abs_dlogit"] for e in par),
        "max_abs_dpresent_key": max((e.get("max_abs_dpresent_key", 0.0) for e in par), default=None) if v["kv_cache"] else None,
        "bytes": os.path.getsize(path), "sha256": sha256(path),
        "attention": attention_summary(path),
    }


def part_of(e):
    """Which make_fixtures part owns a manifest entry: tiny (GPT-2), tiny_llama or trained."""
    return "tiny_llama" if e["model"].startswith("tiny_llama") else "tiny" if e["model"].startswith("tiny") else "trained"


def build_tiny(entries, log):
    out_root = os.path.join(HERE, "fixtures", "tiny")
    for name in TINY_VARIANTS:
        shutil.rmtree(os.path.join(out_root, name), ignore_errors=True)
    for name, variants in TINY_VARIANTS.items():
        ckpt = tiny.make_tiny(name, os.path.join(WORK, "tiny"))
        os.makedirs(os.path.join(out_root, name), exist_ok=True)
        for var in variants:
            path = os.path.join(out_root, name, var + ".onnx")
            model, v, par = export.export_one(ckpt, var, path, log=log)
            check(path)
            entries.append(entry(name, var, path, par, v, model.config,
                                 ["random init; biases and LayerNorm re-drawn (tiny.py)"], None))
        if name == "tiny_l3_h4_d16":
            add_optimum(entries, ckpt, name, os.path.join(out_root, name, "optimum18-sdpa-kv.onnx"), log)


def build_tiny_llama(entries, log):
    import export_llama

    out_root = os.path.join(HERE, "fixtures", "tiny")
    for name, variants in TINY_LLAMA_VARIANTS.items():
        shutil.rmtree(os.path.join(out_root, name), ignore_errors=True)
        ckpt = tiny.make_tiny_llama(name, os.path.join(WORK, "tiny"))
        os.makedirs(os.path.join(out_root, name), exist_ok=True)
        note = "random init (LlamaForCausalLM); RMSNorm weights re-drawn (tiny.py)"
        for var in variants:
            path = os.path.join(out_root, name, var + ".onnx")
            model, v, par = export_llama.export_variant(ckpt, var, path, log=log)
            check(path)
            notes = [note]
            if v.pop("enable_gqa", False):
                notes.append(f"exported with {export_llama.GQA_ENV}=1: transformers calls SDPA with enable_gqa=True on "
                             "the key/value heads (no repeat_kv), so opset 23 has one Attention node reading "
                             "present.i.key/value directly")
            entries.append(entry(name, var, path, par, v, export_llama.config_summary(model.config), notes, None))
        if name == "tiny_llama_l2_q4_kv2_d16":
            add_optimum(entries, export_llama.legacy_checkpoint(ckpt), name,
                        os.path.join(out_root, name, "optimum18-sdpa-kv.onnx"), log, load=export_llama.load_llama,
                        summary=export_llama.config_summary, init_note=note,
                        ckpt_for_parity=ckpt)


OPTIMUM_VENV = os.path.join(WORK, "optimum-venv")


def optimum_export(ckpt, out_path, log):
    """optimum-cli export onnx (text-generation-with-past, opset 18) of a local checkpoint, in its own venv
    (optimum-onnx pins transformers<4.58). Returns the versions used, or None when that venv is absent."""
    import subprocess

    py = os.path.join(OPTIMUM_VENV, "bin", "python")
    if not os.path.exists(py):
        log("optimum venv absent (models/optimum_export.sh creates it): no optimum export")
        return None
    tmp = os.path.join(WORK, "optimum", os.path.basename(os.path.normpath(ckpt)))
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(["bash", os.path.join(HERE, "optimum_export.sh"), ckpt, tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"optimum_export.sh exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    vers = subprocess.run([py, "-c", "import json, importlib.metadata as m; print(json.dumps({k: m.version(k) for k in "
                           "('optimum', 'optimum-onnx', 'torch', 'transformers', 'onnx')}))"],
                          check=True, capture_output=True, text=True).stdout
    m = onnx.load(os.path.join(tmp, "model.onnx"))
    onnx.save(m, out_path)  # self-contained (no external data below 2 GB)
    return json.loads(vers)


def add_optimum(entries, ckpt, name, path, log, external=None, blob=None, load=None, summary=None, init_note=None,
                ckpt_for_parity=None):
    """optimum export of ckpt (GPT-2 by default; load/summary give another family's loader and config block)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    raw = path if blob is None else os.path.join(WORK, "trained_raw", "optimum-kv.onnx")
    try:
        vers = optimum_export(ckpt, raw, log)
    except Exception as e:  # noqa: BLE001 - a failing exporter is recorded, not fatal
        log(f"optimum export of {name} failed: {e!r}")
        return
    if vers is None:
        return
    notes = ["exported by optimum-cli in its own venv (models/optimum_export.sh); parity is against "
             "transformers " + export.versions()["transformers"] + " (sdpa) in models/.venv"]
    if init_note:
        notes.insert(0, init_note)
    elif name.startswith("tiny"):
        notes.insert(0, "random init; biases and LayerNorm re-drawn (tiny.py)")
    if blob is not None:
        notes += ["initializers > 1 KiB moved to the shared external-data file weights.bin (deduplicated)"]
        notes += share_weights.externalize(raw, path, blob)
    check(path)
    model = (load or export.load_model)(ckpt_for_parity or ckpt, "sdpa")
    par = export.parity(model, path, True)
    log(f"optimum-kv ({name}): max |dlogit| {max(e['max_abs_dlogit'] for e in par):.2e}")
    v = {"exporter": "optimum", "opset": 18, "attn": "sdpa (optimum default)", "kv_cache": True}
    e = entry(name, "optimum18-sdpa-kv", path, par, v, summary(model.config) if summary else model.config, notes,
              external)
    e["versions"] = vers
    entries.append(e)


def build_trained(entries, ckpt, log):
    raw = os.path.join(WORK, "trained_raw")
    out = os.path.join(HERE, "fixtures", "trained")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(raw, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    blob = share_weights.SharedBlob(os.path.join(out, "weights.bin"))
    for var in TRAINED_VARIANTS:
        rp = os.path.join(raw, var + ".onnx")
        model, v, par_raw = export.export_one(ckpt, var, rp, log=log)
        dst = os.path.join(out, var + ".onnx")
        notes = share_weights.externalize(rp, dst, blob)
        check(dst)
        par = export.parity(model, dst, v["kv_cache"])  # parity of the file as committed
        worst = max(e["max_abs_dlogit"] for e in par)
        log(f"  after sharing weights: max |dlogit| {worst:.2e}, blob {blob.size / 1e6:.1f} MB")
        notes = ["initializers > 1 KiB moved to the shared external-data file weights.bin (deduplicated)"] + notes
        entries.append(entry("trained", var, dst, par, v, model.config, notes, blob.path))
    add_optimum(entries, ckpt, "trained", os.path.join(out, "optimum18-sdpa-kv.onnx"), log, blob.path, blob)
    return blob


def ckpt_to_hf(ckpt_pt, out_dir):
    """train.py's resumable checkpoint (ckpt.pt) -> a Hugging Face checkpoint directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    st = torch.load(ckpt_pt, weights_only=False, map_location="cpu")
    model = GPT2LMHeadModel(GPT2Config.from_dict(st["config"]))
    model.load_state_dict(st["model"])
    model.save_pretrained(out_dir)
    return out_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trained", default=os.path.join(WORK, "train", "hf"))
    ap.add_argument("--only", choices=["tiny", "trained", "tiny_llama"], default=None)
    ap.add_argument("--manifest", default=os.path.join(HERE, "manifest.json"))
    ap.add_argument("--refresh-trained-info", action="store_true",
                    help="only rewrite the manifest's trained_model section (training log, results/*.json)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.refresh_trained_info:
        man = json.load(open(args.manifest))
        man["trained_model"] = trained_summary(args.trained)
        with open(args.manifest, "w") as fh:
            json.dump(man, fh, indent=1)
            fh.write("\n")
        return 0

    def log(msg):
        print(msg, flush=True)

    old = {}
    if args.only and os.path.exists(args.manifest):
        old = json.load(open(args.manifest))
    entries = [e for e in old.get("fixtures", []) if args.only and part_of(e) != args.only]
    if args.only in (None, "tiny"):
        build_tiny(entries, log)
    if args.only in (None, "tiny_llama"):
        build_tiny_llama(entries, log)
    trained_info = old.get("trained_model")
    if args.trained.endswith(".pt"):
        args.trained = ckpt_to_hf(args.trained, os.path.join(WORK, "ckpt_hf"))
    if args.only in (None, "trained"):
        build_trained(entries, args.trained, log)
        trained_info = trained_summary(args.trained)
    entries.sort(key=lambda e: e["path"])
    bad = [e["path"] for e in entries if not e["max_abs_dlogit"] <= export.PARITY_TOL]
    manifest = {
        "about": "ONNX fixtures of lookat (GPT-2; tiny random Llamas: models/fixtures/tiny/tiny_llama_*). Regenerate "
                 "with models/make_fixtures.py; see models/README.md.",
        "generated_by": "models/.venv/bin/python models/make_fixtures.py" + (f" --only {args.only}" if args.only else ""),
        "generated_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": export.versions(),
        "parity_tolerance": export.PARITY_TOL,
        "parity_cases": [dict(zip(("batch", "sequence", "past", "left_pad"), c)) for c in export.PARITY_CASES],
        "parity_note": "max |Δ| between onnxruntime (CPU EP) and PyTorch over real (unpadded) positions; "
                       "exports without cache run the cases with past 0",
        "trained_model": trained_info,
        "fixtures": entries,
    }
    with open(args.manifest, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    log(f"{len(entries)} fixtures in {rel(args.manifest)}")
    if bad:
        log(f"PARITY ABOVE {export.PARITY_TOL}: {bad}")
        return 1
    return 0


def trained_summary(ckpt):
    info = {"checkpoint": rel(ckpt)}
    logp = os.path.join(os.path.dirname(ckpt), "train_log.jsonl")
    if os.path.exists(logp):
        lines = [json.loads(x) for x in open(logp)]
        start = next((x for x in lines if x["event"] == "start"), None)
        end = [x for x in lines if x["event"] == "end"]
        if start:
            info["train_args"] = start["args"]
            info["unigram_val_loss"] = start["unigram_val_loss"]
        if end:
            info["final"] = end[-1]
    for key, fname in (("heldout_eval", "eval_ppl.json"), ("key_spectrum", "key_spectrum.json")):
        p = os.path.join(HERE, "results", fname)
        if os.path.exists(p):
            info[key] = json.load(open(p))
    return info


if __name__ == "__main__":
    sys.exit(main())
