"""Hostile inputs, concurrency and the onnxruntime version range, through real sessions."""

import gc
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from lookat_testlib import CONTRACT, ROOT, attention_model, plugin_path, session
from test_op import D, H, M, good_feeds, make_codebooks, shapeless_model, step_inputs


def test_nan_and_inf_inputs_do_not_crash():
    sess = session(shapeless_model())
    for name, value in [("query", np.nan), ("query", np.inf), ("key", np.nan), ("value", -np.inf), ("past_value", np.nan)]:
        feeds = good_feeds(np.random.default_rng(1))
        feeds[name].flat[3] = value
        out = sess.run(None, feeds)[0]
        assert out.shape == feeds["query"].shape  # NaN/Inf in, NaN/Inf out: no crash, no error
    feeds = good_feeds(np.random.default_rng(2))
    feeds["codebooks"][1, 2, 3, 0] = np.inf
    # An infinite centroid is reported as such, at its position, not as an uncalibrated model.
    with pytest.raises(Exception, match=r"infinite value \(inf\) at \[head 1, subspace 2, centroid 3, dimension 0\]") as err:
        sess.run(None, feeds)
    assert "calibrate" not in str(err.value)
    assert np.isfinite(sess.run(None, good_feeds(np.random.default_rng(3)))[0]).all()


def test_zero_length_dimensions():
    sess = session(shapeless_model())
    rng = np.random.default_rng(4)
    # No new tokens: the cache passes through, the output is empty.
    feeds = good_feeds(rng, b=2, p=3, s=1)
    for n in ("query", "key", "value"):
        feeds[n] = feeds[n][:, :0]
    feeds["attention_mask"] = feeds["attention_mask"][:, :3]
    out, codes, values = sess.run(None, feeds)
    assert out.shape == (2, 0, H * D)
    np.testing.assert_array_equal(codes, feeds["past_key_codes"])
    np.testing.assert_array_equal(values, feeds["past_value"])
    # Empty batch.
    feeds = good_feeds(rng, b=0, p=3, s=2)
    out, codes, values = sess.run(None, feeds)
    assert out.shape == (0, 2, H * D) and codes.shape == (0, H, 5, M)


def test_huge_declared_past_is_checked_before_allocating():
    sess = session(shapeless_model())
    feeds = good_feeds(np.random.default_rng(5), b=0, p=0, s=1)
    huge = 1 << 40
    feeds["past_key_codes"] = np.empty((0, H, huge, M), np.uint8)
    feeds["past_value"] = np.empty((0, H, huge, D), np.float32)
    feeds["attention_mask"] = np.empty((0, huge + 1), np.int64)
    out, codes, _ = sess.run(None, feeds)  # zero elements: nothing to allocate, nothing to read
    assert codes.shape == (0, H, huge + 1, M)
    feeds["past_value"] = np.empty((0, H, huge - 1, D), np.float32)
    with pytest.raises(Exception, match="different past lengths"):
        sess.run(None, feeds)


def test_sessions_from_many_threads_and_load_unload_cycles():
    cb = make_codebooks(np.random.default_rng(6), 16)
    model = attention_model(H, D, M, 16, codebooks=cb, mask=False)
    feeds = step_inputs(np.random.default_rng(7), 2, 3, np.zeros((2, H, 0, M), np.uint8), np.zeros((2, H, 0, D), np.float32), None)
    want = session(model).run(None, feeds)
    errors, results = [], []

    def worker():
        try:
            for _ in range(5):
                s = session(model)  # registers the library again on new options
                results.append(s.run(None, feeds))
                del s
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 40
    for r in results:
        for got, w in zip(r, want):
            np.testing.assert_array_equal(got, w)
    for _ in range(30):  # every session released: ORT may unload the library each time
        s = session(model)
        s.run(None, feeds)
        del s
        gc.collect()
    np.testing.assert_array_equal(session(model).run(None, feeds)[0], want[0])


OLDEST = ROOT / ".venv-ort-oldest" / "bin" / "python"  # made by scripts/setup.sh


def test_oldest_supported_onnxruntime_gives_the_same_results(tmp_path):
    if not OLDEST.is_file():
        raise FileNotFoundError(f"{OLDEST} is missing: run scripts/setup.sh")
    model = attention_model(H, D, M, 256, codebooks=make_codebooks(np.random.default_rng(8), 256))
    model.ir_version = 8  # onnxruntime 1.17 reads IR version 9 too; 8 keeps it conservative
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    rng = np.random.default_rng(9)
    mask = np.ones((2, 7), np.int64)
    mask[1, :2] = 0
    feeds = step_inputs(rng, 2, 3, rng.integers(0, 256, (2, H, 4, M)).astype(np.uint8), rng.standard_normal((2, H, 4, D)).astype(np.float32), mask)
    np.savez(tmp_path / "feeds.npz", **feeds)
    want = session(model).run(None, feeds)
    script = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        assert ort.__version__.startswith({CONTRACT["min_onnxruntime"] + "."!r}), ort.__version__
        o = ort.SessionOptions()
        o.register_custom_ops_library({str(plugin_path())!r})
        s = ort.InferenceSession({str(tmp_path / 'm.onnx')!r}, o, providers=["CPUExecutionProvider"])
        f = dict(np.load({str(tmp_path / 'feeds.npz')!r}))
        np.savez({str(tmp_path / 'out.npz')!r}, *s.run(None, f))
    """)
    subprocess.run([str(OLDEST), "-c", script], check=True)
    got = np.load(tmp_path / "out.npz")
    for i, w in enumerate(want):
        np.testing.assert_array_equal(got[f"arr_{i}"], w)
