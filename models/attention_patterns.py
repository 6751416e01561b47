#!/usr/bin/env python3
"""Print the layer-0 attention core of ONNX GPT-2 exports: the nodes that lie between the key Concat that
makes present.0.key (or the QKV Split, without cache) and the node that applies the probabilities to the
values, in graph order, with small constant inputs shown. Needs only onnx + numpy.

    python models/attention_patterns.py models/fixtures/tiny/tiny_l3_h4_d16/*.onnx
"""
import collections
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def core(path):
    m = onnx.load(path, load_external_data=False)
    g = m.graph
    prod = {o: n for n in g.node for o in n.output}
    cons = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            cons[i].append(n)
    consts = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[n.output[0]] = n.attribute[0].t
    start = prod.get("present.0.key") or next(n for n in g.node if n.op_type == "Split")
    vname = "present.0.value"
    # end: the MatMul whose one input descends from present.0.value (or the Attention node)
    desc = set()
    stack = [start]
    while stack:
        n = stack.pop()
        if id(n) in desc:
            continue
        desc.add(id(n))
        for o in n.output:
            stack.extend(cons[o])
    end = None
    for n in g.node:
        if id(n) in desc and n.op_type == "Attention":
            end = n
            break
    if end is None:
        for n in g.node:
            if id(n) in desc and n.op_type == "MatMul" and any(
                    i == vname or (i in prod and prod[i].op_type in ("Concat", "Transpose") and vname in prod[i].output)
                    for i in n.input):
                end = n
                break
    if end is None:  # no cache: the MatMul after Softmax
        sm = next(n for n in g.node if id(n) in desc and n.op_type == "Softmax")
        end = next(c for c in g.node if id(c) in desc and c.op_type == "MatMul" and any(
            i in prod and _reaches(prod, prod[i], sm) for i in c.input))
    anc = set()
    stack = [end]
    while stack:
        n = stack.pop()
        if id(n) in anc:
            continue
        anc.add(id(n))
        for i in n.input:
            if i in prod:
                stack.append(prod[i])
    out = []
    for n in g.node:
        if id(n) in desc and id(n) in anc and n.op_type not in ("Shape", "Gather", "Unsqueeze", "Constant",
                                                                   "Squeeze", "Cast", "Slice", "Range"):
            extra = []
            for i in n.input:
                if i in consts:
                    a = numpy_helper.to_array(consts[i])
                    if a.size <= 4:
                        extra.append(np.array2string(a.reshape(-1), precision=6))
            attrs = [f"{a.name}={onnx.helper.get_attribute_value(a)}" for a in n.attribute
                     if a.name in ("perm", "axis", "scale", "is_causal")]
            out.append(n.op_type + (f"({', '.join(attrs + extra)})" if attrs or extra else ""))
    return out


def _reaches(prod, n, target, depth=6):
    if n is target:
        return True
    if depth == 0:
        return False
    return any(_reaches(prod, prod[i], target, depth - 1) for i in n.input if i in prod)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(p)
        print("   ", " -> ".join(core(p)))
