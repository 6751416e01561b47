"""LookatAttention in Python onnxruntime 1.31.1, loaded with register_custom_ops_library."""

import subprocess
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lookat_testlib import (
    attention_model,
    check_codes_are_nearest,
    plugin_path,
    reference_attention,
    session,
)

H, D, M = 4, 64, 8
TOL = 1e-4  # same bound as the Rust kernel tests: values in [-1, 1], scores within about ±10


def make_codebooks(rng, k, heads=H, m=M, d=D):
    return rng.uniform(-1.5, 1.5, size=(heads, m, k, d // m)).astype(np.float32)


def step_inputs(rng, b, s, past_codes, past_values, mask):
    e = H * D
    feeds = {
        "query": rng.uniform(-1.5, 1.5, (b, s, e)).astype(np.float32),
        "key": rng.uniform(-1.5, 1.5, (b, s, e)).astype(np.float32),
        "value": rng.uniform(-1, 1, (b, s, e)).astype(np.float32),
        "past_key_codes": past_codes,
        "past_value": past_values,
    }
    if mask is not None:
        feeds["attention_mask"] = mask
    return feeds


@pytest.mark.parametrize("value_np,value_onnx", [(np.float32, TensorProto.FLOAT), (np.float16, TensorProto.FLOAT16)])
@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("with_mask", [False, True])
def test_prefill_then_decode_matches_reference(value_np, value_onnx, k, with_mask):
    rng = np.random.default_rng(1234 + k)
    cb = make_codebooks(rng, k)
    sess = session(attention_model(H, D, M, k, value_type=value_onnx, codebooks=cb, mask=with_mask))
    b = 2
    past_codes = np.zeros((b, H, 0, M), np.uint8)
    past_values = np.zeros((b, H, 0, D), value_np)
    # Batch row 1 is left-padded by 2 tokens.
    pad = np.array([0, 2])
    for step, s in enumerate([5, 1, 1, 1]):
        p = past_codes.shape[2]
        mask = None
        if with_mask:
            mask = (np.arange(p + s)[None, :] >= pad[:, None]).astype(np.int64)
        feeds = step_inputs(rng, b, s, past_codes, past_values, mask)
        out, codes, values = sess.run(None, feeds)
        assert out.shape == (b, s, H * D) and out.dtype == np.float32
        assert codes.shape == (b, H, p + s, M) and codes.dtype == np.uint8
        assert values.shape == (b, H, p + s, D) and values.dtype == value_np
        np.testing.assert_array_equal(codes[:, :, :p], past_codes)
        np.testing.assert_array_equal(values[:, :, :p], past_values)
        new_values = feeds["value"].reshape(b, s, H, D).transpose(0, 2, 1, 3).astype(value_np)
        np.testing.assert_array_equal(values[:, :, p:], new_values)
        check_codes_are_nearest(feeds["key"], cb, codes[:, :, p:])
        ref = reference_attention(feeds["query"], codes, values, cb, mask, p)
        err = np.abs(out - ref).max()
        assert err <= TOL, f"step {step}: max |diff| {err}"
        past_codes, past_values = codes, values


def test_lossless_when_keys_are_centroids():
    """Keys assembled from centroids: the op equals exact softmax attention (float64) within 1e-5."""
    rng = np.random.default_rng(7)
    k = 256
    cb = make_codebooks(rng, k)
    sess = session(attention_model(H, D, M, k, codebooks=cb, mask=False))
    b, s = 2, 6
    codes = rng.integers(0, k, (b, H, s, M))
    keys = np.stack([cb[np.arange(H)[:, None], np.arange(M)[None, :], codes[bi, :, t]] for bi in range(b) for t in range(s)])
    keys = keys.reshape(b, s, H, D)
    feeds = step_inputs(rng, b, s, np.zeros((b, H, 0, M), np.uint8), np.zeros((b, H, 0, D), np.float32), None)
    feeds["key"] = keys.reshape(b, s, H * D).astype(np.float32)
    out = sess.run(["output"], feeds)[0]
    q = feeds["query"].reshape(b, s, H, D).astype(np.float64)
    v = feeds["value"].reshape(b, s, H, D).astype(np.float64)
    scores = np.einsum("bshd,bthd->bhst", q, keys.astype(np.float64)) / np.sqrt(D)
    scores[:, :, np.triu(np.ones((s, s), bool), 1)] = -np.inf
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    exact = np.einsum("bhst,bthd->bshd", w, v).reshape(b, s, H * D)
    assert np.abs(out - exact).max() <= 1e-5


def shapeless_model():
    """Graph inputs without declared shapes, so shape errors reach the op's own checks."""
    model = attention_model(H, D, M, 16)
    for vi in model.graph.input:
        vi.type.tensor_type.ClearField("shape")
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    return model


def good_feeds(rng, b=2, p=3, s=2, k=16):
    return {
        "query": rng.standard_normal((b, s, H * D)).astype(np.float32),
        "key": rng.standard_normal((b, s, H * D)).astype(np.float32),
        "value": rng.standard_normal((b, s, H * D)).astype(np.float32),
        "past_key_codes": rng.integers(0, k, (b, H, p, M)).astype(np.uint8),
        "past_value": rng.standard_normal((b, H, p, D)).astype(np.float32),
        "attention_mask": np.ones((b, p + s), np.int64),
        "codebooks": rng.standard_normal((H, M, k, D // M)).astype(np.float32),
    }


def _bad(name, mutate, expect):
    return pytest.param(mutate, expect, id=name)


# Element types are checked by onnxruntime itself against the kernel's type constraints before the
# op runs, so those two messages are ORT's; every other message is the op's own.
BAD_INPUTS = [
    _bad("query_rank", lambda f: f.update(query=f["query"][0]), ["'query'", "rank 3"]),
    _bad("key_shape", lambda f: f.update(key=f["key"][:, :1]), ["input 'key' shape [2, 1, 256] must be [2, 2, 256]", "num_kv_heads=4"]),
    _bad("value_shape", lambda f: f.update(value=f["value"][:1]), ["input 'value' shape [1, 2, 256] must be [2, 2, 256]", "num_kv_heads=4"]),
    _bad("hidden_not_divisible", lambda f: [f.update({n: f[n][..., :-1]}) for n in ("query", "key", "value")], ["num_heads=4"]),
    _bad("codebook_heads", lambda f: f.update(codebooks=f["codebooks"][:3]), ["'codebooks'", "3 heads", "num_kv_heads=4"]),
    _bad("codebook_subspaces", lambda f: f.update(codebooks=np.zeros((H, 3, 16, 21), np.float32)), ["'codebooks'", "does not split head_dim=64"]),
    _bad("codebook_too_many_centroids", lambda f: f.update(codebooks=np.zeros((H, M, 300, 8), np.float32)), ["300 centroids", "1 to 256"]),
    _bad("codebook_rank", lambda f: f.update(codebooks=f["codebooks"][0]), ["'codebooks'", "rank 4"]),
    _bad("past_lengths_differ", lambda f: f.update(past_value=f["past_value"][:, :, :2]), ["'past_key_codes' and 'past_value'", "(3 vs 2)"]),
    _bad("past_codes_subspaces", lambda f: f.update(past_key_codes=f["past_key_codes"][..., :4]), ["'past_key_codes'", "subspaces=8"]),
    _bad("past_value_batch", lambda f: f.update(past_value=f["past_value"][:1]), ["'past_value'", "batch=2"]),
    _bad("mask_length", lambda f: f.update(attention_mask=f["attention_mask"][:, :-1]), ["'attention_mask'", "past_tokens + new_tokens=5"]),
    _bad("mask_rank", lambda f: f.update(attention_mask=f["attention_mask"][0]), ["'attention_mask'", "rank 2"]),
    _bad("code_beyond_codebook", lambda f: f["past_key_codes"].__setitem__((1, 2, 0, 5), 200), ["code 200", "batch 1, kv head 2, token 0, subspace 5", "16 centroids"]),
    _bad("nan_codebooks", lambda f: f["codebooks"].__setitem__((0, 0, 0, 0), np.nan), ["holds NaN at [head 0, subspace 0, centroid 0, dimension 0]", "lookat-calibrate"]),
    _bad("wrong_value_dtype", lambda f: f.update(past_value=f["past_value"].astype(np.float64)), ["Unexpected input data type", "double", "expected: (tensor(float))"]),
    _bad("wrong_codes_dtype", lambda f: f.update(past_key_codes=f["past_key_codes"].astype(np.int8)), ["Unexpected input data type", "int8", "expected: (tensor(uint8))"]),
]


@pytest.mark.parametrize("mutate,expect", BAD_INPUTS)
def test_bad_input_gives_clear_error_and_session_survives(mutate, expect):
    rng = np.random.default_rng(3)
    sess = session(shapeless_model())
    feeds = good_feeds(rng)
    mutate(feeds)
    with pytest.raises(Exception) as info:
        sess.run(None, feeds)
    msg = str(info.value)
    for piece in expect:
        assert piece in msg, f"{piece!r} not in: {msg}"
    # The process and the session are still alive and correct afterwards.
    out = sess.run(None, good_feeds(np.random.default_rng(4)))
    assert np.isfinite(out[0]).all()


def test_missing_num_heads_and_uncalibrated_codebooks_fail_at_session_creation():
    cb = np.full((H, M, 16, D // M), np.nan, np.float32)
    # onnxruntime wraps kernel-creation errors: RuntimeException, our message kept whole
    # (docs/op-spec.md, Errors).
    with pytest.raises(Exception, match="lookat-calibrate") as info:
        session(attention_model(H, D, M, 16, codebooks=cb))
    assert type(info.value).__name__ == "RuntimeException", type(info.value)
    assert "Exception during initialization: LookatAttention node 'attn0': input 'codebooks' holds NaN" in str(info.value)
    model = attention_model(H, D, M, 16, node_name="no_heads")
    del model.graph.node[0].attribute[:]
    with pytest.raises(Exception, match="node 'no_heads': attribute 'num_heads'"):
        session(model)


def test_window_input_without_a_window_is_refused():
    model = shapeless_model()
    model.graph.node[0].input.append("past_key_window")
    model.graph.input.append(helper.make_tensor_value_info("past_key_window", TensorProto.FLOAT, None))
    sess = session(model)
    feeds = good_feeds(np.random.default_rng(5))
    feeds["past_key_window"] = np.zeros((2, H, 1, D), np.float32)
    with pytest.raises(Exception, match="input 'past_key_window' is read only when attribute 'sinks' or 'window' is > 0"):
        sess.run(None, feeds)


def test_eight_threads_on_one_session_equal_serial_runs():
    rng = np.random.default_rng(11)
    sess = session(attention_model(H, D, M, 256, codebooks=make_codebooks(rng, 256)), threads=2)
    cases = []
    for i in range(16):
        b, p, s = 1 + i % 3, (i * 37) % 200, 1 + i % 4
        mask = np.ones((b, p + s), np.int64)
        mask[0, : i % 3] = 0
        cases.append(
            step_inputs(
                rng,
                b,
                s,
                rng.integers(0, 256, (b, H, p, M)).astype(np.uint8),
                rng.uniform(-1, 1, (b, H, p, D)).astype(np.float32),
                mask,
            )
        )
    serial = [sess.run(None, f) for f in cases]
    results = [[None] * len(cases) for _ in range(8)]
    errors = []

    def worker(t):
        try:
            for rep in range(3):
                for i in range(len(cases)):
                    j = (i + t) % len(cases)
                    results[t][j] = sess.run(None, cases[j])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for t in range(8):
        for i in range(len(cases)):
            for got, want in zip(results[t][i], serial[i]):
                np.testing.assert_array_equal(got, want)


def test_plugin_exports_only_register_custom_ops():
    out = subprocess.run(
        ["nm", "-D", "--defined-only", plugin_path()], check=True, capture_output=True, text=True
    ).stdout
    symbols = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert symbols == ["RegisterCustomOps"], symbols


def test_absent_past_inputs_mean_an_empty_cache():
    """Models without cache I/O leave inputs 3 and 4 empty: the same as P = 0."""
    rng = np.random.default_rng(21)
    cb = make_codebooks(rng, 16)
    with_past = session(attention_model(H, D, M, 16, codebooks=cb, mask=False))
    model = attention_model(H, D, M, 16, codebooks=cb, mask=False)
    node = model.graph.node[0]
    node.input[3] = ""
    node.input[4] = ""
    del model.graph.input[3:5]
    without_past = session(model)
    feeds = step_inputs(rng, 2, 4, np.zeros((2, H, 0, M), np.uint8), np.zeros((2, H, 0, D), np.float32), None)
    want = with_past.run(None, feeds)
    got = without_past.run(None, {k: feeds[k] for k in ("query", "key", "value")})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    one_only = attention_model(H, D, M, 16, codebooks=cb, mask=False)
    one_only.graph.node[0].input[3] = ""
    del one_only.graph.input[3]
    feeds.pop("past_key_codes")
    with pytest.raises(Exception, match="must be given together"):
        session(one_only).run(None, feeds)
