"""Tiny random-initialised GPT-2 checkpoints for structural (graph) fixtures.

Hugging Face initialises every bias to 0 and every LayerNorm to (1, 0); the dynamo exporter's optimizer then
drops the zero biases, giving graphs unlike a real checkpoint's. So biases and LayerNorm parameters are
re-drawn to non-trivial random values here. Weights are seeded: the same name always gives the same model.
"""
import os

import torch

TINY_CONFIGS = {
    # name: (n_layer, n_head, n_embd)  -- all with vocab 512, n_positions 128
    "tiny_l3_h4_d16": (3, 4, 64),
    "tiny_l2_h12_d8": (2, 12, 96),
    "tiny_l1_h2_d64": (1, 2, 128),
}


def make_tiny(name, out_dir, seed=20261128):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd = TINY_CONFIGS[name]
    cfg = GPT2Config(vocab_size=512, n_positions=128, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(seed + sum(map(ord, name)))
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif ".ln_" in pname or pname.startswith("transformer.ln_f"):
                p.normal_(1.0, 0.2)  # LayerNorm weights
    path = os.path.join(out_dir, name)
    model.save_pretrained(path)
    return path
