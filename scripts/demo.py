"""The main job, for now: one LookatAttention node in onnxruntime next to exact attention.

Keys come from a low-rank-plus-noise distribution (trained models' keys are far from isotropic),
codebooks from a few Lloyd iterations on separate calibration keys. For each m the script runs a
prefill of T tokens through the op and prints the agreement with exact softmax attention (numpy,
float64) on the same inputs. Later issues replace this with rewrite -> calibrate -> generate on the
bundled GPT-2 fixture.
"""

import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests" / "python"))
from lookat_testlib import attention_model, session  # noqa: E402

H, D, K, T = 4, 64, 256, 256
rng = np.random.default_rng(0)
basis = rng.standard_normal((H, 12, D)) / np.sqrt(12)


def keys(n):
    z = rng.standard_normal((n, H, 12))
    return np.einsum("nhr,hrd->nhd", z, basis) * 1.5 + 0.2 * rng.standard_normal((n, H, D))


def kmeans(x, k, iters=12):
    c = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        a = ((c**2).sum(1)[None, :] - 2 * x @ c.T).argmin(1)
        for j in range(k):
            pts = x[a == j]
            if len(pts):
                c[j] = pts.mean(0)
    return c


calib = keys(2048)
q = rng.standard_normal((1, T, H * D)).astype(np.float32) * 0.5
k = keys(T).astype(np.float32)
v = rng.standard_normal((1, T, H * D)).astype(np.float32)

# Exact causal attention, float64.
qh = q.reshape(T, H, D).astype(np.float64)
s = np.einsum("thd,uhd->htu", qh, k.astype(np.float64)) / np.sqrt(D)
s[:, np.triu(np.ones((T, T), bool), 1)] = -np.inf
p_exact = np.exp(s - s.max(-1, keepdims=True))
p_exact /= p_exact.sum(-1, keepdims=True)
exact = np.einsum("htu,uhd->thd", p_exact, v.reshape(T, H, D)).reshape(1, T, H * D)

print(f"onnxruntime {ort.__version__}; LookatAttention prefill, H={H} D={D} K={K} T={T}")
print(f"{'m':>3} {'key B/token':>11} {'cosine':>8} {'max |diff|':>10}   output[0, -1, :4]")
print(f"{'exact':>15} {'':>8} {'':>10}   {np.array2string(exact[0, -1, :4], precision=4)}")
for m in (1, 2, 4, 8, 16):
    sub = D // m
    cb = np.stack(
        [np.stack([kmeans(calib[:, h, j * sub : (j + 1) * sub].copy(), K) for j in range(m)]) for h in range(H)]
    ).astype(np.float32)
    sess = session(attention_model(H, D, m, K, codebooks=cb, mask=False))
    out = sess.run(
        ["output"],
        {
            "query": q,
            "key": k.reshape(1, T, H * D),
            "value": v,
            "past_key_codes": np.zeros((1, H, 0, m), np.uint8),
            "past_value": np.zeros((1, H, 0, D), np.float32),
        },
    )[0]
    a, b = out.ravel().astype(np.float64), exact.ravel()
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    print(f"{m:>3} {m:>11} {cos:8.4f} {np.abs(out - exact).max():10.4f}   {np.array2string(out[0, -1, :4], precision=4)}")
print("(fp32 keys: 256 B/token/head; cosine alone says little when attention is diffuse)")
