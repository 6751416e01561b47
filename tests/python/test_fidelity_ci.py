"""CI guard: the calibrated trained fixture must stay close to its original end to end (decoding
held-out text token by token through the cache in onnxruntime), and the same check must fail on a
model whose codebooks are corrupted — so the check can catch drift."""

import subprocess

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lookat_testlib import CONTRACT, ROOT, generate_metrics, tool
from test_rewrite import rewrite

ORIGINAL = ROOT / "models/fixtures/trained/dyn18-eager-kv.onnx"
# Thresholds on top-1 agreement of next-token predictions, mean KL(original || lookat) in nats and
# the perplexity ratio, over 160 held-out prose tokens. Measured on the committed fixture (m = 4,
# 12k calibration tokens): 0.950, 0.0018, 0.998; with the corrupted codebooks 0.575, 0.367, 1.37 —
# each threshold separates the two with margin. The test prints both measurements.
MIN_AGREEMENT = 0.85
MAX_KL = 0.05
MAX_PPL_RATIO = 1.10


def measure(model):
    return generate_metrics(ORIGINAL, model, "--new-tokens", "4", "--eval-text", ROOT / "models/text/eval/prose.txt",
                            "--eval-tokens", "160")


def passes(po, pl, agree, kl):
    return agree >= MIN_AGREEMENT and kl <= MAX_KL and pl / po <= MAX_PPL_RATIO


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("fidelity")
    rewrite(ORIGINAL, d / "rw.onnx", "--subspaces", "4")
    subprocess.run(
        [str(tool("lookat-calibrate")), "--original", str(ORIGINAL), "--rewritten", str(d / "rw.onnx"), "-o", str(d / "cal.onnx"),
         "--text", *[str(ROOT / f"models/text/calib/{x}.txt") for x in ("prose", "code", "technical")],
         "--tokens", "12000", "--iters", "10", "--quiet"],
        check=True,
    )
    return d / "cal.onnx"


def test_calibrated_fixture_stays_close_to_the_original(calibrated):
    assert passes(*measure(calibrated))


def test_the_same_check_fails_with_corrupted_codebooks(calibrated):
    model = onnx.load(str(calibrated), load_external_data=False)
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        if t.name.startswith(CONTRACT["codebooks_prefix"]):
            book = numpy_helper.to_array(t)
            # Codes now name the wrong centroids (shuffled within each subspace), at the wrong scale
            # (a unit mix-up, ×30): what a stale or mismatched codebook file would do.
            order = rng.permuted(np.broadcast_to(np.arange(book.shape[2])[None, None, :, None], book.shape), axis=2)
            shuffled = np.take_along_axis(book, order, axis=2) * 30.0
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(shuffled, dtype=np.float32), t.name))
    bad = calibrated.with_name("corrupted.onnx")
    onnx.save(model, str(bad))
    assert not passes(*measure(bad))
