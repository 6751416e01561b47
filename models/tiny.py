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


TINY_LLAMA_CONFIGS = {
    # name: (layers, query heads, key/value heads, head size, hidden, MLP, rope_theta)  -- vocab 512, 256 positions,
    # tied embeddings, no biases, RMSNorm eps 1e-5 (as SmolLM2-135M)
    "tiny_llama_l2_q4_kv2_d16": (2, 4, 2, 16, 64, 128, 50000.0),
    "tiny_llama_l1_q6_kv2_d64": (1, 6, 2, 64, 96, 96, 100000.0),  # hidden 96 != 6 x 64 (explicit head_dim)
    "tiny_llama_l1_q4_kv1_d32": (1, 4, 1, 32, 128, 128, 25000.0),  # multi-query: one key/value head
}


def make_tiny_llama(name, out_dir, seed=20261203):
    """A random LlamaForCausalLM. RMSNorm weights are re-drawn around 1 (a fresh model has all ones, which the
    dynamo optimizer may fold away); Llama has no biases."""
    from transformers import LlamaConfig, LlamaForCausalLM

    n_layer, n_head, n_kv, head, hidden, mlp, theta = TINY_LLAMA_CONFIGS[name]
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=n_layer,
                      num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=head,
                      max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": theta},
                      attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed + sum(map(ord, name)))
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    path = os.path.join(out_dir, name)
    model.save_pretrained(path)
    return path
