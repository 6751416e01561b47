#!/usr/bin/env python3
"""Print the fixtures of models/manifest.json (or another manifest given as argument, e.g.
models/fixtures/smollm2/manifest.json) as a Markdown table (for models/README.md).
Config column: layers x heads x head size (Llama: layers x query/key-value heads x head size), vocab."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    m = json.load(open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "manifest.json")))
    print("| file | exporter | opset | attn | cache | config (L×H×D, vocab) | bytes | max abs Δlogit | max abs Δ present key | key path (layer 0) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in m["fixtures"]:
        c = e["config"]
        path = e["path"].replace("models/fixtures/", "")
        dk = e["max_abs_dpresent_key"]
        heads = f"{c['n_head']}/{c['n_kv_head']}" if "n_kv_head" in c else f"{c['n_head']}"
        print(f"| `{path}` | {e['exporter']} | {e['opset']} | {e['attn_implementation']} | "
              f"{'yes' if e['kv_cache'] else 'no'} | {c['n_layer']}×{heads}×{c['head_size']}, {c['vocab_size']} | "
              f"{e['bytes']:,} | {e['max_abs_dlogit']:.1e} | {'' if dk is None else f'{dk:.1e}'} | "
              f"{' → '.join(e['attention']['key_path_op_types'])} |")


if __name__ == "__main__":
    main()
