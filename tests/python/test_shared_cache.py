"""Shared max-length cache buffers (lookat-rewrite --shared-cache): the host binds one buffer as
both past and present through IOBinding (python/lookat/decode.py's CacheDecoder) and
LookatAttention appends in place. Token-by-token decoding must equal, bit for bit, the copying
mode of the same model (a rewrite without --shared-cache, same codebooks), and so must the
fallback without IOBinding (plain session.run, the op copying the past into a fresh present)."""

import importlib.util
import subprocess

import numpy as np
import onnx
import pytest

from lookat_testlib import CONTRACT, ROOT, cache_feeds, codes_name, random_codebooks, session, tool

PSL = CONTRACT["past_sequence_length_input"]
MAX_ROWS = CONTRACT["max_sequence_length_dim"]

_spec = importlib.util.spec_from_file_location("lookat_decode", ROOT / "python" / "lookat" / "decode.py")
decode = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode)

CASES = {
    # GPT-2 (multi-head, [B, S, H·D] inputs, legacy and dynamo exports), float32 values.
    "gpt2-ts17": ("models/fixtures/trained/ts17-eager-kv.onnx", ["--subspaces", "8"]),
    "gpt2-ts17-int8": ("models/fixtures/trained/ts17-eager-kv.onnx", ["--subspaces", "8", "--value-dtype", "i8"]),
    "gpt2-dyn18-f16-window": (
        "models/fixtures/trained/dyn18-eager-kv.onnx",
        ["--subspaces", "4", "--value-dtype", "f16", "--sinks", "2", "--window", "8"],
    ),
    # Llama family (RoPE, grouped-query attention), with transforms, a key window and int8
    # value rows.
    "llama-dyn23-gqa-int8": (
        "models/fixtures/tiny/tiny_llama_l2_q4_kv2_d16/dyn23-sdpagqa-kv.onnx",
        ["--subspaces", "4", "--transform", "--sinks", "1", "--window", "4", "--value-dtype", "i8"],
    ),
    "llama-optimum": ("models/fixtures/tiny/tiny_llama_l2_q4_kv2_d16/optimum18-sdpa-kv.onnx", ["--subspaces", "2"]),
    "smollm2-ts17": ("models/fixtures/smollm2/ts17-sdpa-kv.onnx", ["--subspaces", "16", "--value-dtype", "f16"]),
}


def rewrite(src, args, out, shared):
    cmd = [str(tool("lookat-rewrite")), str(ROOT / src), "-o", str(out), *args] + (["--shared-cache"] if shared else [])
    subprocess.run(cmd, check=True, capture_output=True)
    return random_codebooks(onnx.load(str(out)))


def prompt_and_steps(vocab, n_prompt=6, n_steps=12, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, n_prompt), rng.integers(0, vocab, n_steps)


def plain_shared_run(sess, prompt, steps, max_length):
    """The fallback without IOBinding: capacity arrays in, fresh presents out, fed back."""
    inputs = {i.name: i for i in sess.get_inputs()}
    past = {}
    for name, i in inputs.items():
        if name.startswith("past_key_values."):
            rows = max_length if i.shape[2] == MAX_ROWS else 0
            past[name] = np.zeros((1, i.shape[1], rows, i.shape[3]), decode.DTYPES[i.type])
    names = [o.name for o in sess.get_outputs()]
    length, logits = 0, []
    for ids in [prompt] + [[t] for t in steps]:
        s = len(ids)
        feeds = cache_feeds(sess, np.array([ids], np.int64), length, {PSL: np.array(length, np.int64), **past})
        outs = dict(zip(names, sess.run(None, feeds)))
        logits.append(outs["logits"][0])
        for name in past:
            past[name] = outs[name.replace("past_key_values.", "present.", 1)]
        length += s
    return logits, past


@pytest.mark.parametrize("case", CASES, ids=str)
def test_shared_buffers_decode_equals_the_copying_mode_bit_for_bit(case, tmp_path):
    src, args = CASES[case]
    if not (ROOT / src).is_file():
        raise FileNotFoundError(f"{src} is missing: run scripts/setup.sh")
    copying = rewrite(src, args, tmp_path / "copy.onnx", shared=False)
    shared = rewrite(src, args, tmp_path / "shared.onnx", shared=True)
    onnx.checker.check_model(shared, full_check=True)
    ins = {i.name: i for i in shared.graph.input}
    assert ins[PSL].type.tensor_type.elem_type == onnx.TensorProto.INT64
    codes = [n for n in ins if n.endswith(CONTRACT["codes_suffix"])]
    assert codes and all(ins[n].type.tensor_type.shape.dim[2].dim_param == MAX_ROWS for n in codes)

    vocab = [d.dim_value for d in copying.graph.output[0].type.tensor_type.shape.dim][-1]
    prompt, steps = prompt_and_steps(vocab)
    max_length = len(prompt) + len(steps) + 5
    runs = {}
    for name, model in [("copying", copying), ("shared", shared)]:
        dec = decode.CacheDecoder(session(model), max_length=max_length)
        assert dec.shared == (name == "shared")
        # Rows no step reaches hold a marker: appended in place, the op leaves them alone (a
        # present onnxruntime allocated apart and copied back would bring zeros there).
        for buffer in dec.buffers.values():
            buffer.view(np.uint8)[:, :, len(prompt) + len(steps):] = 0xAB
        logits = [dec.step(prompt)[0]] + [dec.step([t])[0] for t in steps]
        runs[name] = (dec, logits)
    (copy_dec, copy_logits), (shared_dec, shared_logits) = runs["copying"], runs["shared"]
    for i, (a, b) in enumerate(zip(copy_logits, shared_logits)):
        assert np.array_equal(a, b), f"{case}: logits of call {i} differ (max |Δ| {np.abs(a - b).max():.3e})"

    # The op wrote into the host's own buffers, in place: their valid rows are the copying mode's
    # final cache, the rows after them still hold the marker.
    length = len(prompt) + len(steps)
    assert shared_dec.buffers, "no shared buffer was bound"
    for name, buffer in shared_dec.buffers.items():
        final = copy_dec.past[name].numpy()
        assert np.array_equal(buffer[:, :, :length], final), name
        assert (buffer.view(np.uint8)[:, :, length:] == 0xAB).all(), f"{name}: the tail was rewritten"
    assert any(codes_name(n) in shared_dec.buffers for n in [c[: -len(CONTRACT["codes_suffix"])] for c in codes])
    assert shared_dec.cache_bytes() == copy_dec.cache_bytes()

    plain_logits, plain_past = plain_shared_run(session(shared), prompt, steps, max_length)
    for i, (a, b) in enumerate(zip(copy_logits, plain_logits)):
        assert np.array_equal(a, b), f"{case}: plain-run logits of call {i} differ"
    for name, value in plain_past.items():
        if name in shared_dec.buffers:
            assert not value[:, :, length:].any(), f"{name}: a separate present's tail must be zeros"


def test_shared_buffer_errors_name_the_input(tmp_path):
    src, args = CASES["gpt2-ts17"]
    sess = session(rewrite(src, args, tmp_path / "shared.onnx", shared=True))
    dec = decode.CacheDecoder(sess, max_length=8)
    dec.step([1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="exceed max_length=8"):
        dec.step([1, 2, 3])
    # Past the buffers' end, straight through onnxruntime.
    inputs = {i.name: i for i in sess.get_inputs()}
    past = {PSL: np.array(7, np.int64)}
    for name, i in inputs.items():
        if name.startswith("past_key_values."):
            past[name] = np.zeros((1, i.shape[1], 8, i.shape[3]), decode.DTYPES[i.type])
    feeds = cache_feeds(sess, np.array([[1, 2]], np.int64), 7, past)
    with pytest.raises(Exception, match="past_sequence_length' is 7"):
        sess.run(None, feeds)
    with pytest.raises(ValueError, match="needs max_length"):
        decode.CacheDecoder(sess)


def test_rewrite_refuses_shared_buffers_without_cache_io(tmp_path):
    src = "models/fixtures/trained/ts17-eager-nokv.onnx"
    proc = subprocess.run(
        [str(tool("lookat-rewrite")), str(ROOT / src), "-o", str(tmp_path / "x.onnx"), "--subspaces", "8", "--shared-cache"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1 and "shared cache buffers need a model with cache I/O" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_bindings_that_alias_other_buffers_are_refused(tmp_path):
    """Only a present cache and its own past may share memory, both pairs or neither: a key window
    bound in place, or codes shared without the values, is refused by name (the kernels read the
    inputs while they write the outputs)."""
    src, args = CASES["gpt2-dyn18-f16-window"]
    sess = session(rewrite(src, args, tmp_path / "shared.onnx", shared=True))
    ins = {i.name: i for i in sess.get_inputs()}
    window = next(n for n in ins if n.endswith(CONTRACT["window_suffix"]))
    codes = next(n for n in ins if n.endswith(CONTRACT["codes_suffix"]))
    value = codes[: -len(CONTRACT["codes_suffix"])].replace(".key", ".value")
    present = lambda n: n.replace("past_key_values.", "present.", 1)  # noqa: E731

    def step_bindings(length):
        """A decoder after `length` tokens, with its binding set up for the next token as
        CacheDecoder.step would (the tests then bend one binding)."""
        dec = decode.CacheDecoder(sess, max_length=32)
        dec.step(np.arange(1, length + 1))
        b = dec.binding
        keep = cache_feeds(sess, np.array([[5]], np.int64), length, {PSL: np.array(length, np.int64)})
        for name, v in keep.items():
            b.bind_cpu_input(name, v)
        for name in [n for n in dec.past_names if n not in dec.buffers]:
            b.bind_ortvalue_input(name, dec.past[name])
            b.bind_output(present(name), "cpu")
        return dec, keep

    # The window is full (2 sinks + 8 recent) after 12 tokens: past and present have one shape.
    dec, keep = step_bindings(12)
    dec.binding.bind_ortvalue_output(present(window), dec.past[window])
    with pytest.raises(Exception, match="output 'present_key_window' overlaps input 'past_key_window'"):
        sess.run_with_iobinding(dec.binding)

    dec, keep = step_bindings(4)
    spare = decode.ort.OrtValue.ortvalue_from_numpy(np.zeros_like(dec.buffers[value]))
    dec.binding.bind_ortvalue_output(present(value), spare)
    with pytest.raises(Exception, match="bind both 'past_key_codes'/'present_key_codes' and 'past_value'/'present_value'"):
        sess.run_with_iobinding(dec.binding)
