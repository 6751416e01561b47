"""Check every ONNX fixture listed in models/manifest.json (needs onnxruntime, onnx, numpy, pytest; no torch).

For each fixture: the file (and its external-data file) exists, onnxruntime (CPU EP) opens it, its inputs
and outputs match the manifest (names, dtypes, symbolic shapes), a small forward pass gives finite logits of
the right shape, and for KV-cache exports, decoding one more token from the returned cache reproduces the
logits of the full sequence. A missing manifest or fixture is a failure, never a skip.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "models", "manifest.json")

ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "bool": "tensor(bool)", "int32": "tensor(int32)"}


def _load_manifest():
    with open(MANIFEST, encoding="utf-8") as fh:
        return json.load(fh)


def _entries():
    if not os.path.exists(MANIFEST):
        return [pytest.param(None, id="manifest-missing")]
    return [pytest.param(e, id=e["path"]) for e in _load_manifest()["fixtures"]]


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _dim(d, b, s, p):
    if isinstance(d, int):
        return d
    env = {"batch": b, "sequence": s, "past_sequence": p,  # export.py's names
           "batch_size": b, "sequence_length": s, "past_sequence_length": p}  # optimum's names
    return int(eval(d, {"__builtins__": {}}, env))  # e.g. "past_sequence+sequence"


def _feeds(entry, b, s, p, ids=None):
    rng = np.random.default_rng(0)
    vocab = entry["config"]["vocab_size"]
    feeds = {}
    for spec in entry["inputs"]:
        shape = [_dim(d, b, s, p) for d in spec["shape"]]
        name = spec["name"]
        if name == "input_ids":
            feeds[name] = ids if ids is not None else rng.integers(0, vocab, size=shape, dtype=np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, dtype=np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(p, p + s, dtype=np.int64), shape).copy()
        else:
            feeds[name] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def test_manifest_lists_fixtures():
    assert os.path.exists(MANIFEST), f"missing {MANIFEST}"
    m = _load_manifest()
    assert m["fixtures"], "manifest lists no fixtures"
    kinds = {(e["model"], e["exporter"], e["opset"], e["kv_cache"]) for e in m["fixtures"]}
    for exporter, opset in (("torchscript", 17), ("dynamo", 18), ("dynamo", 23)):
        assert ("trained", exporter, opset, True) in kinds, f"no trained {exporter} opset {opset} export with cache"
    for e in m["fixtures"]:
        assert e["max_abs_dlogit"] <= m["parity_tolerance"], (e["path"], e["max_abs_dlogit"])


@pytest.mark.parametrize("entry", _entries())
def test_fixture(entry):
    assert entry is not None, f"missing {MANIFEST}"
    path = os.path.join(ROOT, entry["path"])
    assert os.path.exists(path), f"fixture missing: {entry['path']}"
    if entry.get("external_data"):
        ext = os.path.join(ROOT, entry["external_data"])
        assert os.path.exists(ext), f"external data missing: {entry['external_data']}"
        # every external tensor points inside the shared file
        m = onnx.load(path, load_external_data=False)
        size = os.path.getsize(ext)
        for t in m.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                kv = {x.key: x.value for x in t.external_data}
                assert kv["location"] == os.path.basename(ext)
                assert int(kv["offset"]) + int(kv["length"]) <= size, t.name
    sess = _session(path)
    for got, want in ((sess.get_inputs(), entry["inputs"]), (sess.get_outputs(), entry["outputs"])):
        assert [g.name for g in got] == [w["name"] for w in want]
        for g, w in zip(got, want):
            assert g.type == ORT_TYPES[w["dtype"]], (g.name, g.type, w["dtype"])
            assert len(g.shape) == len(w["shape"]), (g.name, g.shape, w["shape"])
            assert list(g.shape) == w["shape"], (g.name, g.shape, w["shape"])

    vocab = entry["config"]["vocab_size"]
    pasts = [0, 3] if entry["kv_cache"] else [0]
    for p in pasts:
        outs = sess.run(None, _feeds(entry, 1, 4, p))
        logits = outs[0]
        assert logits.shape == (1, 4, vocab), logits.shape
        assert np.isfinite(logits).all()
        for spec, arr in zip(entry["outputs"], outs):
            assert list(arr.shape) == [_dim(d, 1, 4, p) for d in spec["shape"]], spec["name"]

    if entry["kv_cache"]:
        # incremental decoding: full 5-token pass vs 4 tokens then 1 token from the returned cache
        ids = np.random.default_rng(1).integers(0, vocab, size=(1, 5), dtype=np.int64)
        full = sess.run(None, _feeds(entry, 1, 5, 0, ids=ids))[0]
        names = [o["name"] for o in entry["outputs"]]
        first = dict(zip(names, sess.run(None, _feeds(entry, 1, 4, 0, ids=ids[:, :4]))))
        feeds = _feeds(entry, 1, 1, 4, ids=ids[:, 4:])
        for k in feeds:
            if k.startswith("past_key_values."):
                feeds[k] = first[k.replace("past_key_values.", "present.")]
        step = sess.run(None, feeds)[0]
        assert np.abs(step[0, -1] - full[0, -1]).max() < 1e-4
