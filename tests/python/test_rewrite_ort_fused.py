"""lookat-rewrite on onnxruntime's fused com.microsoft.MultiHeadAttention (graphs built here, since
none of the exporters we run emits it), and the clear refusal of com.microsoft.Attention."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper
from onnx import numpy_helper as nh

from test_rewrite import lookat_session, rewrite, write_codebooks

B, H, D = 2, 2, 16
E = H * D


def mha_model(unidirectional=1):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((E, 3 * E)) * 0.3).astype(np.float32)
    wo = (rng.standard_normal((E, E)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w_qkv"], ["qkv"]),
        helper.make_node("Split", ["qkv", "splits"], ["q", "k", "v"], axis=2),
        helper.make_node("Cast", ["attention_mask"], ["mask32"], to=T.INT32),
        helper.make_node(
            "MultiHeadAttention",
            ["q", "k", "v", "", "mask32", "", "past_key", "past_value"],
            ["attn", "present_key", "present_value"],
            domain="com.microsoft",
            name="mha0",
            num_heads=H,
            unidirectional=unidirectional,
        ),
        helper.make_node("MatMul", ["attn", "w_o"], ["y"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "mha",
        [
            vi("x", T.FLOAT, ["B", "S", E]),
            vi("attention_mask", T.INT64, ["B", "T"]),
            vi("past_key", T.FLOAT, ["B", H, "P", D]),
            vi("past_value", T.FLOAT, ["B", H, "P", D]),
        ],
        [vi("y", T.FLOAT, ["B", "S", E]), vi("present_key", T.FLOAT, ["B", H, "T", D]), vi("present_value", T.FLOAT, ["B", H, "T", D])],
        [nh.from_array(w, "w_qkv"), nh.from_array(wo, "w_o"), nh.from_array(np.array([E, E, E], np.int64), "splits")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model


def run_steps(sess, xs, key_name, value_dtype=np.float32):
    past = {key_name: np.zeros((B, H, 0, D), np.uint8 if key_name.endswith("codes") else np.float32), "past_value": np.zeros((B, H, 0, D), value_dtype)}
    outs, p = [], 0
    for x in xs:
        s = x.shape[1]
        mask = np.ones((B, p + s), np.int64)
        mask[1, :2] = 0  # row 1 left-padded by two tokens
        y, pk, pv = sess.run(None, {"x": x, "attention_mask": mask, **past})
        outs.append(y)
        past = {key_name: pk, "past_value": pv}
        p += s
    return outs


def test_multi_head_attention_is_rewritten_and_matches(tmp_path):
    src = tmp_path / "mha.onnx"
    onnx.save(mha_model(), str(src))
    dst = tmp_path / "rw.onnx"
    out = rewrite(src, dst, "--subspaces", str(D)).stdout
    assert "pattern ort-multi-head-attention: 1" in out
    rewritten = onnx.load(str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    names = {v.name: v.type.tensor_type.elem_type for v in list(rewritten.graph.input) + list(rewritten.graph.output)}
    assert names["past_key_codes"] == T.UINT8 and names["present_key_codes"] == T.UINT8
    assert not any(n.op_type == "MultiHeadAttention" for n in rewritten.graph.node)

    # Lossless codebooks: m = D, and every key value the test will produce is a centroid (at most
    # 18 values per dimension), so the rewritten model must reproduce the original to float error.
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((B, s, E)).astype(np.float32) for s in (6, 1, 1, 1)]
    probe = mha_model()
    probe.graph.output.append(helper.make_empty_tensor_value_info("k"))
    sess = ort.InferenceSession(probe.SerializeToString())
    keys = np.concatenate(
        [
            sess.run(["k"], {"x": x, "attention_mask": np.ones((B, x.shape[1]), np.int64), "past_key": np.zeros((B, H, 0, D), np.float32), "past_value": np.zeros((B, H, 0, D), np.float32)})[0].reshape(-1, H, D)
            for x in xs
        ]
    )
    book = np.zeros((H, D, 256, 1), np.float32)
    for h in range(H):
        for j in range(D):
            vals = np.unique(keys[:, h, j])
            book[h, j, :, 0] = np.concatenate([vals, np.full(256 - len(vals), vals[-1])])
    write_codebooks(rewritten, [book], tmp_path / "cal.onnx")

    want = run_steps(ort.InferenceSession(str(src)), xs, "past_key")
    got = run_steps(lookat_session(tmp_path / "cal.onnx"), xs, "past_key_codes")
    for w, g in zip(want, got):
        # Row 1's first two positions are padding: their outputs are undefined in both.
        np.testing.assert_allclose(g[0], w[0], atol=1e-4)
        np.testing.assert_allclose(g[1, -1:], w[1, -1:], atol=1e-4)


def test_non_causal_multi_head_attention_is_refused(tmp_path):
    src = tmp_path / "mha.onnx"
    onnx.save(mha_model(unidirectional=0), str(src))
    proc = rewrite(src, tmp_path / "rw.onnx", "--subspaces", "4", check=False)
    assert proc.returncode == 2
    assert "not causal" in proc.stderr and "ort-multi-head-attention" in proc.stderr


def test_ort_attention_with_stacked_past_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(2)
    vi = helper.make_tensor_value_info
    node = helper.make_node("Attention", ["x", "w", "b", "", "past"], ["y", "present"], domain="com.microsoft", num_heads=H, unidirectional=1, name="att0")
    graph = helper.make_graph(
        [node],
        "att",
        [vi("x", T.FLOAT, ["B", "S", E]), vi("past", T.FLOAT, [2, "B", H, "P", D])],
        [vi("y", T.FLOAT, ["B", "S", E]), vi("present", T.FLOAT, [2, "B", H, "T", D])],
        [nh.from_array(rng.standard_normal((E, 3 * E)).astype(np.float32), "w"), nh.from_array(np.zeros(3 * E, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    src = tmp_path / "att.onnx"
    onnx.save(model, str(src))
    proc = rewrite(src, tmp_path / "rw.onnx", "--subspaces", "4", check=False)
    assert proc.returncode == 2
    assert "com.microsoft::Attention 'att0'" in proc.stderr and "stacked" in proc.stderr
