#!/usr/bin/env python3
"""Export a Hugging Face GPT-2 checkpoint to ONNX through the exporters lookat supports, and check parity.

One export = (exporter, opset, attn_implementation, with/without KV cache):

    ts14 / ts17 / ts20   TorchScript exporter, torch.onnx.export(..., dynamo=False), opset 14 / 17 / 20
    dyn18 / dyn23        dynamo exporter, torch.onnx.export(..., dynamo=True), opset 18 / 23

I/O (optimum's naming, BNSH layout for the cache):
    inputs   input_ids i64[batch,sequence], attention_mask i64[batch,past_sequence+sequence],
             position_ids i64[batch,sequence], past_key_values.{i}.key|value f32[batch,heads,past_sequence,head]
    outputs  logits f32[batch,sequence,vocab], present.{i}.key|value f32[batch,heads,past_sequence+sequence,head]
Exports without cache have only the first three inputs (attention_mask [batch,sequence]) and logits.

Every export is run in onnxruntime (CPU) against PyTorch on a few (batch, length, past) cases, one of them
left-padded, and the max |Δlogit| (and max |Δ| of the present keys) is returned for the manifest.

Examples (with network, any GPT-2 checkpoint name or directory works):
    models/.venv/bin/python models/export.py --checkpoint gpt2 --out out/gpt2 --variants ts17-eager-kv dyn23-sdpa-kv
    models/.venv/bin/python models/export.py --checkpoint path/to/hf_dir --out out/x --variants all
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

ALL_VARIANTS = [f"{e}-{a}-{k}" for e in ("ts14", "ts17", "dyn18", "dyn23") for a in ("eager", "sdpa") for k in ("kv", "nokv")]
PARITY_TOL = 1e-4


def parse_variant(v):
    m = re.fullmatch(r"(ts|dyn)(\d+)-(eager|sdpa)-(kv|nokv)", v)
    if not m:
        raise ValueError(f"bad variant {v!r}; expected e.g. ts17-eager-kv, dyn23-sdpa-nokv")
    return {"exporter": "torchscript" if m[1] == "ts" else "dynamo", "opset": int(m[2]), "attn": m[3],
            "kv_cache": m[4] == "kv"}


def load_model(checkpoint, attn):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    return model


def dims(cfg):
    """(layers, key/value heads, head size) of a GPT-2 or Llama config: the cache is [batch, kv heads, length, head]."""
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    return cfg.num_hidden_layers, n_kv, head


class WithCache(torch.nn.Module):
    """(input_ids, attention_mask, position_ids, past k0, past v0, ...) -> (logits, present k0, v0, ...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layer = dims(model.config)[0]

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.n_layer)],
                             config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


class NoCache(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


def io_names(cfg, kv):
    ins = ["input_ids", "attention_mask", "position_ids"]
    outs = ["logits"]
    if kv:
        for i in range(dims(cfg)[0]):
            ins += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            outs += [f"present.{i}.key", f"present.{i}.value"]
    return ins, outs


def make_inputs(cfg, b, s, p, kv, left_pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (b, s), generator=g)
    mask = torch.ones(b, p + s, dtype=torch.int64)
    if left_pad:
        mask[0, :left_pad] = 0  # row 0 is left-padded
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
    args = [ids, mask, pos]
    if kv:
        n_layer, h, d = dims(cfg)
        for _ in range(n_layer):
            args += [torch.randn(b, h, p, d, generator=g), torch.randn(b, h, p, d, generator=g)]
    return args


# symbolic dim names of the exported graphs
B, S, P, T = "batch", "sequence", "past_sequence", "past_sequence+sequence"


def symbolic_shapes(cfg, kv):
    n_layer, h, d = dims(cfg)
    ins = {"input_ids": [B, S], "attention_mask": [B, T if kv else S], "position_ids": [B, S]}
    outs = {"logits": [B, S, cfg.vocab_size]}
    if kv:
        for i in range(n_layer):
            ins[f"past_key_values.{i}.key"] = ins[f"past_key_values.{i}.value"] = [B, h, P, d]
            outs[f"present.{i}.key"] = outs[f"present.{i}.value"] = [B, h, T, d]
    return ins, outs


def export_torchscript(wrapper, args, path, opset, ins, outs, kv):
    axes = {"input_ids": {0: B, 1: S}, "position_ids": {0: B, 1: S},
            "attention_mask": {0: B, 1: T if kv else S}, "logits": {0: B, 1: S}}
    for n in ins[3:]:
        axes[n] = {0: B, 2: P}
    for n in outs[1:]:
        axes[n] = {0: B, 2: T}
    wrapper.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(args), path, dynamo=False, opset_version=opset, input_names=ins,
                          output_names=outs, dynamic_axes=axes, do_constant_folding=True)
    wrapper.eval()  # the TorchScript exporter restores the training flag it found


def export_dynamo(wrapper, args, path, opset, ins, outs, kv, external_data=False):
    D = torch.export.Dim.DYNAMIC
    ds = {"input_ids": {0: D, 1: D}, "attention_mask": {0: D, 1: D}, "position_ids": {0: D, 1: D}}
    if kv:
        ds["past"] = tuple({0: D, 2: D} for _ in ins[3:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(wrapper, tuple(args), dynamo=True, opset_version=opset, input_names=ins,
                                 output_names=outs, dynamic_shapes=ds, verbose=False, optimize=True)
        prog.save(path, external_data=external_data)


def rename_dims(path, cfg, kv):
    """Give the exported graph's symbolic dims the names batch / sequence / past_sequence / past_sequence+sequence
    (the dynamo exporter writes s0, s1, "s1 + s2" ...), consistently over inputs, outputs and value_info."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    want_in, want_out = symbolic_shapes(cfg, kv)
    mapping = {}
    for vi in m.graph.input:
        for dim, w in zip(vi.type.tensor_type.shape.dim, want_in[vi.name]):
            if dim.dim_param and isinstance(w, str) and re.fullmatch(r"[A-Za-z_]\w*", dim.dim_param):
                mapping.setdefault(dim.dim_param, w)
    if not mapping:
        return
    pat = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")\b")

    def fix(vi):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param:
                new = pat.sub(lambda mm: mapping[mm[1]], dim.dim_param).replace(" ", "")
                dim.dim_param = new
    for coll in (m.graph.input, m.graph.output, m.graph.value_info):
        for vi in coll:
            fix(vi)
    # outputs: name the total length as in the inputs when the exporter wrote the sum the other way round
    for vi in m.graph.output:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in ("sequence+past_sequence",):
                dim.dim_param = T
    onnx.save(m, path)


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


PARITY_CASES = [  # (batch, sequence, past, left_pad)
    (1, 4, 0, 0),
    (2, 5, 3, 0),
    (1, 1, 7, 0),
    (2, 6, 4, 2),
]


def parity(model, path, kv):
    cfg = model.config
    sess = ort_session(path)
    in_names, out_names = io_names(cfg, kv)  # fed and read by name: optimum orders its inputs differently
    wrapper = (WithCache(model) if kv else NoCache(model)).eval()
    res = []
    for b, s, p, pad in PARITY_CASES:
        if not kv:
            p, pad = 0, min(pad, s - 1)
        args = make_inputs(cfg, b, s, p, kv, left_pad=pad, seed=b * 100 + s * 10 + p)
        with torch.no_grad():
            ref = wrapper(*args)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(out_names, {n: a.numpy() for n, a in zip(in_names, args)})
        lg_ref, lg = ref[0].numpy(), got[0]
        valid = args[1][:, p:].numpy().astype(bool)  # only positions that are real tokens
        dl = float(np.abs(lg_ref - lg)[valid].max())
        entry = {"batch": b, "sequence": s, "past": p, "left_pad": pad, "max_abs_dlogit": dl}
        if kv:
            dk = 0.0
            for i in range(dims(cfg)[0]):
                kr, kg = ref[1 + 2 * i].numpy(), got[1 + 2 * i]
                assert kr.shape == kg.shape, (kr.shape, kg.shape)
                dk = max(dk, float(np.abs(kr - kg).max()))
            entry["max_abs_dpresent_key"] = dk
        res.append(entry)
    return res


def io_spec(path):
    import onnx

    m = onnx.load(path, load_external_data=False)

    def spec(vi):
        t = vi.type.tensor_type
        return {"name": vi.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]}
    return [spec(v) for v in m.graph.input], [spec(v) for v in m.graph.output]


def export_one(checkpoint, variant, path, log=print, external_data=False, load=load_model):
    """Export `variant` of `checkpoint` (load(checkpoint, attn) gives the eval-mode model; GPT-2 by default)."""
    v = parse_variant(variant)
    model = load(checkpoint, v["attn"])
    cfg = model.config
    ins, outs = io_names(cfg, v["kv_cache"])
    wrapper = (WithCache(model) if v["kv_cache"] else NoCache(model)).eval()
    # example sizes: all distinct and > 1, so no exporter specialises a dim
    args = make_inputs(cfg, 2, 3, 5, v["kv_cache"])
    if not v["kv_cache"]:
        args[1] = torch.ones(2, 3, dtype=torch.int64)
    t0 = time.time()
    if v["exporter"] == "torchscript":
        export_torchscript(wrapper, args, path, v["opset"], ins, outs, v["kv_cache"])
    else:
        export_dynamo(wrapper, args, path, v["opset"], ins, outs, v["kv_cache"], external_data)
    rename_dims(path, cfg, v["kv_cache"])
    secs = time.time() - t0
    par = parity(model, path, v["kv_cache"])
    worst = max(e["max_abs_dlogit"] for e in par)
    log(f"{variant}: exported in {secs:.1f}s, max |dlogit| {worst:.2e}")
    return model, v, par


def versions():
    import onnx
    import onnxruntime
    import onnxscript
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


def config_summary(cfg):
    return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "head_size": cfg.n_embd // cfg.n_head,
            "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="HF GPT-2 checkpoint directory or hub name (gpt2, distilgpt2)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--variants", nargs="+", default=["ts17-eager-kv", "dyn18-eager-kv", "dyn23-sdpa-kv"],
                    help=f"'all' or any of {ALL_VARIANTS} (opset 20 also accepted for TorchScript)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--external-data", action="store_true",
                    help="dynamo: write weights to <file>.onnx.data (needed above 2 GB, e.g. gpt2-xl); "
                         "the TorchScript exporter does this by itself above 2 GB")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = ALL_VARIANTS if args.variants == ["all"] else args.variants
    os.makedirs(args.out, exist_ok=True)
    report = []
    for var in variants:
        path = os.path.join(args.out, f"{var}.onnx")
        model, v, par = export_one(args.checkpoint, var, path, external_data=args.external_data)
        ins, outs = io_spec(path)
        report.append({"path": path, "variant": var, **v, "parity": par,
                       "max_abs_dlogit": max(e["max_abs_dlogit"] for e in par), "inputs": ins, "outputs": outs})
    with open(os.path.join(args.out, "export_report.json"), "w") as fh:
        json.dump({"versions": versions(), "config": config_summary(model.config), "exports": report}, fh, indent=1)
    bad = [r["variant"] for r in report if not r["max_abs_dlogit"] <= PARITY_TOL]
    if bad:
        print("parity above", PARITY_TOL, ":", bad)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
