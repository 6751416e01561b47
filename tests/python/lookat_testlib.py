"""Helpers for the Python end-to-end tests: build one-node LookatAttention models, run them in
onnxruntime with the plugin, and a naive float64 reference that shares no code with the op."""

import os
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = pathlib.Path(__file__).resolve().parents[2]


def plugin_path() -> str:
    path = os.environ.get("LOOKAT_OP_LIB", str(ROOT / "target" / "release" / "liblookat_op.so"))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the LookatAttention plugin {path} is missing: run scripts/setup.sh (cargo build --release)"
        )
    return path


def session(model, threads: int = 2) -> ort.InferenceSession:
    """A CPU session with the plugin loaded; `model` is an onnx.ModelProto or a file path."""
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(plugin_path())
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def attention_model(
    heads: int,
    head_dim: int,
    subspaces: int,
    centroids: int,
    value_type=TensorProto.FLOAT,
    codebooks: np.ndarray | None = None,
    mask: bool = True,
    attrs: dict | None = None,
    node_name: str = "attn0",
) -> onnx.ModelProto:
    """One LookatAttention node. `codebooks` given: an initializer; else a graph input."""
    e = heads * head_dim
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query", f, ["B", "S", e]),
        helper.make_tensor_value_info("key", f, ["B", "S", e]),
        helper.make_tensor_value_info("value", f, ["B", "S", e]),
        helper.make_tensor_value_info("past_key_codes", TensorProto.UINT8, ["B", heads, "P", subspaces]),
        helper.make_tensor_value_info("past_value", value_type, ["B", heads, "P", head_dim]),
    ]
    if mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]))
    initializers = []
    if codebooks is None:
        inputs.append(
            helper.make_tensor_value_info("codebooks", f, [heads, subspaces, centroids, head_dim // subspaces])
        )
    else:
        initializers.append(onnx.numpy_helper.from_array(codebooks.astype(np.float32), "codebooks"))
    node = helper.make_node(
        "LookatAttention",
        ["query", "key", "value", "past_key_codes", "past_value", "attention_mask" if mask else "", "codebooks"],
        ["output", "present_key_codes", "present_value"],
        domain="com.lookat",
        name=node_name,
        num_heads=heads,
        **(attrs or {}),
    )
    outputs = [
        helper.make_tensor_value_info("output", f, ["B", "S", e]),
        helper.make_tensor_value_info("present_key_codes", TensorProto.UINT8, ["B", heads, "T", subspaces]),
        helper.make_tensor_value_info("present_value", value_type, ["B", heads, "T", head_dim]),
    ]
    graph = helper.make_graph([node], "lookat_one_node", inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.lookat", 1)]
    )
    model.ir_version = 9
    return model


def nearest_code_distances(x: np.ndarray, cents: np.ndarray):
    """Squared distances (float64) from x [sub] to every centroid [K, sub]."""
    return ((cents.astype(np.float64) - x.astype(np.float64)) ** 2).sum(axis=1)


def check_codes_are_nearest(key, codebooks, codes_new):
    """key [B,S,H*D]; codes_new [B,H,S,m]: each chosen centroid is nearest within 1e-5 (f64)."""
    b_n, s_n, e = key.shape
    h_n, m, k, sub = codebooks.shape
    d = e // h_n
    for b in range(b_n):
        for h in range(h_n):
            for s in range(s_n):
                for j in range(m):
                    x = key[b, s, h * d + j * sub : h * d + (j + 1) * sub]
                    dist = nearest_code_distances(x, codebooks[h, j])
                    chosen = int(codes_new[b, h, s, j])
                    assert chosen < k
                    assert dist[chosen] <= dist.min() + 1e-5 * (1 + dist.min()), (b, h, s, j)


def reference_attention(query, present_codes, present_values, codebooks, mask, past_len, scale=None):
    """Naive float64 LOOKAT attention: score(t) = scale * sum_j q_j . C[h, j, code[t, j]]."""
    b_n, s_n, e = query.shape
    h_n, m, k, sub = codebooks.shape
    d = e // h_n
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    cb = codebooks.astype(np.float64)
    out = np.zeros((b_n, s_n, e))
    for b in range(b_n):
        for h in range(h_n):
            for s in range(s_n):
                q = query[b, s, h * d : (h + 1) * d].astype(np.float64)
                visible = past_len + s + 1
                scores = np.full(visible, -np.inf)
                for t in range(visible):
                    if mask is not None and mask[b, t] == 0:
                        continue
                    scores[t] = scale * sum(
                        q[j * sub : (j + 1) * sub] @ cb[h, j, present_codes[b, h, t, j]] for j in range(m)
                    )
                if np.isneginf(scores).all():
                    continue
                w = np.exp(scores - scores.max())
                w /= w.sum()
                out[b, s, h * d : (h + 1) * d] = w @ present_values[b, h, :visible].astype(np.float64)
    return out
