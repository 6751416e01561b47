"""Move the large initializers of several ONNX models into ONE shared external-data file, deduplicated.

Every initializer above --threshold bytes is stored once in the blob (deduplicated by the SHA-256 of its
bytes); each model's TensorProto gets data_location=EXTERNAL with location / offset / length pointing into
the blob (offsets aligned to 4096 bytes). The models must sit in the same directory as the blob.

The TorchScript exporter stores GPT-2's tied lm_head as a *transposed* copy of the token embedding
(an initializer [n_embd, vocab] feeding MatMul, different bytes from wte [vocab, n_embd]). A 2-D initializer
whose transpose is already in the blob (or elsewhere in the same model) is therefore replaced by a
`Transpose(perm=[1,0])` node reading the shared tensor, so the 51 MB embedding is stored once for all
exports. That is the only graph change; it is recorded in the manifest as a post-processing step.
"""
import hashlib
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

ALIGN = 4096


class SharedBlob:
    def __init__(self, path):
        self.path = path
        self.index = {}  # sha256 -> (offset, length)
        self.size = 0
        open(path, "wb").close()

    def put(self, data: bytes):
        h = hashlib.sha256(data).hexdigest()
        if h in self.index:
            return self.index[h], False
        off = (self.size + ALIGN - 1) // ALIGN * ALIGN
        with open(self.path, "r+b") as fh:
            fh.seek(off)
            fh.write(data)
        self.index[h] = (off, len(data))
        self.size = off + len(data)
        return self.index[h], True


def _set_external(t, location, off, length):
    for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(f)
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(off)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = onnx.TensorProto.EXTERNAL


def externalize(src, dst, blob: SharedBlob, threshold=1024):
    """Rewrite src (self-contained ONNX) as dst with its large initializers in the shared blob.
    Returns a list of post-processing notes."""
    m = onnx.load(src)
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and len(a.t.raw_data) > threshold:
                    raise RuntimeError(f"{src}: large Constant node {n.name}; move it to an initializer first")
    location = os.path.basename(blob.path)
    notes = []
    arrays = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    local = {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(): name for name, a in arrays.items()}
    new_nodes = []
    keep = []
    for t in m.graph.initializer:
        a = arrays[t.name]
        if a.nbytes <= threshold:
            keep.append(t)
            continue
        data = np.ascontiguousarray(a).tobytes()
        h = hashlib.sha256(data).hexdigest()
        if a.ndim == 2 and h not in blob.index:
            ht = hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest()
            if ht != h and (ht in blob.index or ht in local):
                # a transposed duplicate (TorchScript's lm_head): read the shared tensor through Transpose
                src_name = t.name + "__transposed_from_shared"
                (off, length), _ = blob.put(np.ascontiguousarray(a.T).tobytes())
                nt = onnx.TensorProto(name=src_name, data_type=t.data_type, dims=list(a.T.shape))
                _set_external(nt, location, off, length)
                keep.append(nt)
                new_nodes.append(helper.make_node("Transpose", [src_name], [t.name], perm=[1, 0],
                                                  name=t.name + "__Transpose"))
                notes.append(f"initializer {t.name} {list(a.shape)} (a transposed copy of another weight) replaced "
                             f"by Transpose(perm=[1,0]) of the shared tensor {src_name}")
                continue
        (off, length), _ = blob.put(data)
        _set_external(t, location, off, length)
        keep.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    if new_nodes:
        nodes = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(new_nodes + nodes)
    onnx.save(m, dst)
    return notes


def main():
    import argparse

    ap = argparse.ArgumentParser(description="Rewrite self-contained ONNX files into DIR, sharing one weights file.")
    ap.add_argument("--out", required=True, help="output directory (gets the .onnx files and the blob)")
    ap.add_argument("--blob", default="weights.bin")
    ap.add_argument("--threshold", type=int, default=1024, help="initializers above this many bytes go to the blob")
    ap.add_argument("models", nargs="+", help="put dynamo exports first (their lm_head is untransposed)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    blob = SharedBlob(os.path.join(args.out, args.blob))
    for src in args.models:
        dst = os.path.join(args.out, os.path.basename(src))
        for note in externalize(src, dst, blob, args.threshold):
            print(f"{dst}: {note}")
        onnx.checker.check_model(dst, full_check=True)
    print(f"{blob.path}: {blob.size / 1e6:.1f} MB, {len(blob.index)} tensors")


if __name__ == "__main__":
    main()
