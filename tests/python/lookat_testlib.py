"""Helpers for the Python end-to-end tests: build one-node LookatAttention models, run them in
onnxruntime with the plugin, and a naive float64 reference that shares no code with the op.

The op's names and I/O positions come from contract/contract.json, which `cargo run -p
lookat-contract` generates from contract/src/lib.rs (a Rust test keeps it current)."""

import json
import re
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The Rust tools find libonnxruntime through the onnxruntime package of this interpreter.
os.environ.setdefault("LOOKAT_PYTHON", sys.executable)
CONTRACT = json.loads((ROOT / "contract" / "contract.json").read_text())
DOMAIN, OP_NAME, OPSET = CONTRACT["domain"], CONTRACT["op_name"], CONTRACT["opset_version"]
INPUTS = [p["name"] for p in CONTRACT["inputs"]]
OUTPUTS = [p["name"] for p in CONTRACT["outputs"]]
IN = {name: i for i, name in enumerate(INPUTS)}
OUT = {name: i for i, name in enumerate(OUTPUTS)}


def codes_name(key_tensor: str) -> str:
    """The uint8 code tensor that replaces a float key cache tensor in a rewritten model."""
    return key_tensor + CONTRACT["codes_suffix"]


def codebooks_name(layer: int) -> str:
    return f"{CONTRACT['codebooks_prefix']}{layer}"


def build_release():
    """Builds the workspace (plugin and tools) from the current sources, once per test session, so
    that no test runs a stale plugin; skipped when LOOKAT_OP_LIB points at another build."""
    if os.environ.get("LOOKAT_OP_LIB") or getattr(build_release, "done", False):
        return
    subprocess.run(["cargo", "build", "--release", "--workspace", "--locked", "--quiet"], cwd=ROOT, check=True)
    build_release.done = True


def plugin_path() -> str:
    build_release()
    path = os.environ.get("LOOKAT_OP_LIB", str(ROOT / "target" / "release" / "liblookat_op.so"))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the LookatAttention plugin {path} is missing: run scripts/setup.sh (cargo build --release)"
        )
    return path


def generate_metrics(original, model, *args):
    """Runs lookat-generate's teacher-forced comparison of `model` against `original` (extra
    arguments: the held-out text, tokens, tokenizer...) and returns (perplexity original,
    perplexity lookat, top-1 agreement, KL), printing them."""
    line = subprocess.run(
        [str(tool("lookat-generate")), "--original", str(original), "--model", str(model), *map(str, args)],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()[-1]
    m = re.search(
        r"perplexity original ([\d.]+), +lookat ([\d.]+); next-token top-1 agreement ([\d.]+); "
        r"mean KL\(original \|\| lookat\) ([\d.e-]+)",
        line,
    )
    assert m, line
    po, pl, agree, kl = map(float, m.groups())
    print(f"{pathlib.Path(model).name}: ppl {po:.2f} -> {pl:.2f}, agreement {agree:.4f}, KL {kl:.5f}")
    return po, pl, agree, kl


def random_codebooks(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """`model` (a rewritten one) with seeded random codebooks and identity transforms in place of
    the rewrite's NaNs, changed in place: for tests and benchmarks that need equal or runnable
    models, not good ones."""
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name.startswith(CONTRACT["codebooks_prefix"]):
            data = rng.normal(0, 1, tuple(init.dims)).astype(np.float32)
        elif init.name.startswith(("lookat.key_transform.", "lookat.query_transform.")):
            heads, d, _ = init.dims
            data = np.broadcast_to(np.eye(d, dtype=np.float32), (heads, d, d)).copy()
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(data, init.name))
    return model


def cache_feeds(sess, ids, past_len, past):
    """Feeds of one call through an export's cache: `ids` [B, S] after `past_len` tokens, an
    all-ones attention mask and positions when the model takes them, and `past` (the cache
    inputs, and any other input given by name)."""
    names = {i.name for i in sess.get_inputs()}
    b, s = ids.shape
    feeds = {"input_ids": ids}
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((b, past_len + s), np.int64)
    if "position_ids" in names:
        feeds["position_ids"] = np.tile(np.arange(past_len, past_len + s, dtype=np.int64), (b, 1))
    feeds.update(past)
    return feeds


def tool(name: str) -> pathlib.Path:
    """A command-line tool of the workspace (lookat-rewrite, lookat-calibrate, ...), freshly built."""
    build_release()
    path = ROOT / "target" / "release" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run scripts/setup.sh")
    return path


def tokenize(files, tokenizer=None):
    """Token ids of each text file, as lookat-tokenize gives them to the tools (GPT-2's BPE, or
    `tokenizer`: a tokenizer.json): one int64 array per file."""
    args = [str(tool("lookat-tokenize")), *map(str, files)] + (["--tokenizer", str(tokenizer)] if tokenizer else [])
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr}")
    return [np.array(line.split(), np.int64) for line in proc.stdout.splitlines()]


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
    # Graph inputs and outputs carry the contract's port names.
    shapes = {
        "query": (f, ["B", "S", e]),
        "key": (f, ["B", "S", e]),
        "value": (f, ["B", "S", e]),
        "past_key_codes": (TensorProto.UINT8, ["B", heads, "P", subspaces]),
        "past_value": (value_type, ["B", heads, "P", head_dim]),
        "attention_mask": (TensorProto.INT64, ["B", "T"]),
        "codebooks": (f, [heads, subspaces, centroids, head_dim // subspaces]),
        "output": (f, ["B", "S", e]),
        "present_key_codes": (TensorProto.UINT8, ["B", heads, "T", subspaces]),
        "present_value": (value_type, ["B", heads, "T", head_dim]),
    }
    node_inputs = INPUTS[: IN["codebooks"] + 1]
    if not mask:
        node_inputs[IN["attention_mask"]] = ""
    inputs = [helper.make_tensor_value_info(n, *shapes[n]) for n in node_inputs if n and n != "codebooks"]
    initializers = []
    if codebooks is None:
        inputs.append(helper.make_tensor_value_info("codebooks", *shapes["codebooks"]))
    else:
        initializers.append(onnx.numpy_helper.from_array(codebooks.astype(np.float32), "codebooks"))
    node_outputs = OUTPUTS[: OUT["present_value"] + 1]
    node = helper.make_node(
        OP_NAME, node_inputs, node_outputs, domain=DOMAIN, name=node_name, num_heads=heads, **(attrs or {})
    )
    outputs = [helper.make_tensor_value_info(n, *shapes[n]) for n in node_outputs]
    graph = helper.make_graph([node], "lookat_one_node", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET)])
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
