#!/usr/bin/env python3
"""Print the fixtures of models/manifest.json as a Markdown table (for models/README.md)."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    m = json.load(open(os.path.join(HERE, "manifest.json")))
    print("| file | exporter | opset | attn | cache | config (L×H×D, vocab) | bytes | max abs Δlogit | max abs Δ present key | key path (layer 0) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in m["fixtures"]:
        c = e["config"]
        path = e["path"].replace("models/fixtures/", "")
        dk = e["max_abs_dpresent_key"]
        print(f"| `{path}` | {e['exporter']} | {e['opset']} | {e['attn_implementation']} | "
              f"{'yes' if e['kv_cache'] else 'no'} | {c['n_layer']}×{c['n_head']}×{c['head_size']}, {c['vocab_size']} | "
              f"{e['bytes']:,} | {e['max_abs_dlogit']:.1e} | {'' if dk is None else f'{dk:.1e}'} | "
              f"{' → '.join(e['attention']['key_path_op_types'])} |")


if __name__ == "__main__":
    main()
