"""lookat-eval: attention-level metrics of calibrated models (their m, transforms and key window as
the op applies them) against fp16 / INT8 / INT4 keys, on the trained GPT-2 fixture. The scoring
itself is checked against an f64 reference in calibrate/src/eval.rs; here the tool is driven end to
end: a model whose key window covers every position must measure exact, a window must help, the
scalar schemes must order as their precision, and bad input must be named."""
import json
import subprocess

import onnx
import pytest

from lookat_testlib import ROOT, tool

ORIGINAL = ROOT / "models/fixtures/trained/dyn18-eager-kv.onnx"
EVAL = [ROOT / "models/text/eval/prose.txt", ROOT / "models/text/eval/code.txt"]
CALIB = [ROOT / "models/text/calib/prose.txt"]


def run(name, *args, check=True):
    proc = subprocess.run([str(tool(name)), *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """m = 4 with fsa transforms, and the same constants in a rewrite whose key window (256
    recent tokens) covers every position lookat-eval measures."""
    d = tmp_path_factory.mktemp("eval")
    assert ORIGINAL.is_file(), f"fixture {ORIGINAL} is missing: run scripts/setup.sh"
    run("lookat-rewrite", ORIGINAL, "-o", d / "rw.onnx", "--subspaces", 4, "--transform")
    run("lookat-calibrate", "--original", ORIGINAL, "--rewritten", d / "rw.onnx", "-o", d / "cal.onnx",
        "--text", *CALIB, "--tokens", 4096, "--window", 256, "--transform", "fsa", "--seed", 0, "--quiet")
    run("lookat-rewrite", ORIGINAL, "-o", d / "rw-all.onnx", "--subspaces", 4, "--transform", "--window", 256)
    constants = {t.name: t for t in onnx.load(str(d / "cal.onnx"), load_external_data=False).graph.initializer}
    model = onnx.load(str(d / "rw-all.onnx"), load_external_data=False)
    copied = 0
    for t in model.graph.initializer:
        if t.name.startswith("lookat."):
            t.CopyFrom(constants[t.name])
            copied += 1
    assert copied >= 6  # codebooks and two transforms per layer
    onnx.save(model, str(d / "all.onnx"))
    return d


def test_measures_calibrated_models_with_their_levers(calibrated):
    out = calibrated / "out"
    run("lookat-eval", "--original", ORIGINAL, "--eval-text", *EVAL, "--lengths", 64, 256, "--queries", 8,
        "--model", f"PQ m=4 + fsa={calibrated / 'cal.onnx'}", "--model", f"all={calibrated / 'all.onnx'}",
        "--sinks", 4, "--window", 16, "--out", out, "--quiet")
    data = json.loads((out / "results.json").read_text())
    assert (data["layers"], data["kv_heads"], data["query_heads"], data["head_dim"], data["windows"]) == (2, 4, 4, 64, 2)
    rows = {r["label"]: r for r in data["rows"]}
    scalars = ["fp16", "int8 per-tensor", "int8 per-channel", "int4 per-tensor", "int4 per-channel"]
    # A model with its own window is measured with it only; the others also with --sinks/--window.
    assert set(rows) == {*scalars, *(s + " + window" for s in scalars), "PQ m=4 + fsa", "PQ m=4 + fsa + window", "all"}
    assert rows["PQ m=4 + fsa"]["key_bytes"] == 4 and rows["PQ m=4 + fsa"]["window_tokens"] == 0
    assert rows["PQ m=4 + fsa + window"]["window_tokens"] == 20 and rows["all"]["window_tokens"] == 256
    assert rows["PQ m=4 + fsa + window"]["window_bytes"] == 20 * 64 * 4 and rows["all"]["window_bytes"] == 256 * 64 * 4
    assert rows["fp16"]["key_bytes"] == 128 and rows["int4 per-channel"]["key_bytes"] == 32
    for length in ("64", "256"):
        m = {label: r["metrics"][length] for label, r in rows.items()}
        assert len(m["PQ m=4 + fsa"]["per_layer_kl"]) == 2
        # Every visible token inside the model's own window: scored exactly, whatever the codes.
        assert m["all"]["kl"] < 1e-9 and m["all"]["top5"] == 1.0 and m["all"]["spearman"] > 1 - 1e-9, m["all"]
        assert abs(m["all"]["cosine"] - 1) < 1e-9
        assert 0 < m["PQ m=4 + fsa + window"]["kl"] < m["PQ m=4 + fsa"]["kl"], (m["PQ m=4 + fsa + window"], m["PQ m=4 + fsa"])
        assert m["fp16"]["kl"] < 1e-6 and m["fp16"]["kl"] < m["int8 per-channel"]["kl"] < m["int4 per-channel"]["kl"]
        assert m["int8 per-channel"]["kl"] <= m["int8 per-tensor"]["kl"]
    # Scores over 256 keys are harder to rank than over 64: PQ's KL does not shrink with length.
    assert rows["PQ m=4 + fsa"]["metrics"]["256"]["kl"] > 0.5 * rows["PQ m=4 + fsa"]["metrics"]["64"]["kl"]
    assert "| PQ m=4 + fsa + window | 4.0 | 256 |" in (out / "results.md").read_text()


def test_bad_models_are_named(calibrated, tmp_path):
    base = ["--original", ORIGINAL, "--eval-text", *EVAL, "--lengths", 64, "--out", tmp_path / "o", "--quiet"]
    proc = run("lookat-eval", *base, "--model", calibrated / "cal.onnx", check=False)
    assert proc.returncode == 1 and "is not LABEL=PATH" in proc.stderr, proc.stderr
    # A rewrite of another model: its layers do not match the original's.
    other = ROOT / "models/fixtures/tiny/tiny_l3_h4_d16/dyn18-eager-kv.onnx"
    run("lookat-rewrite", other, "-o", tmp_path / "other.onnx", "--subspaces", 4)
    proc = run("lookat-eval", *base, "--model", f"x={tmp_path / 'other.onnx'}", check=False)
    assert proc.returncode == 1 and "--model 'x'" in proc.stderr and "the original has 2" in proc.stderr, proc.stderr
    # The original itself (no LookatAttention node).
    proc = run("lookat-eval", *base, "--model", f"y={ORIGINAL}", check=False)
    assert proc.returncode == 1 and "--model 'y'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
