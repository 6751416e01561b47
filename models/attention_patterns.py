#!/usr/bin/env python3
"""Print the layer-0 attention core of ONNX exports. Needs only onnx + numpy.

GPT-2 exports: the nodes that lie between the key Concat that makes present.0.key (or the QKV Split, without
cache) and the node that applies the probabilities to the values, in graph order, with small constant inputs
shown (one line per file).

Llama exports (rotary embeddings; recognised by Cos/Sin or RotaryEmbedding nodes): the key path as one line
(from the key projection MatMul through RoPE, the cache Concat and repeat_kv to Softmax/Attention), and with
--full the whole layer-0 attention block as an SSA listing (q/k/v projections to the output projection,
shape arithmetic folded into [dims] where it can be resolved, output shapes from shape inference), plus the
subgraphs that make its rotary cos/sin inputs (from position_ids) and its mask input (from attention_mask).

    python models/attention_patterns.py models/fixtures/tiny/tiny_l3_h4_d16/*.onnx
    python models/attention_patterns.py --full models/fixtures/tiny/tiny_llama_l2_q4_kv2_d16/dyn18-eager-kv.onnx
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




# ---------------------------------------------------------------------------------------------------------------
# Llama family (RoPE, grouped-query attention)

SHAPE_SOURCES = ("Shape", "Size")


class Graph:
    def __init__(self, path):
        m = onnx.load(path, load_external_data=False)
        try:
            m = onnx.shape_inference.infer_shapes(m)
        except Exception:  # noqa: BLE001 - shapes are only decoration
            pass
        self.g = g = m.graph
        self.nodes = list(g.node)
        self.pos = {id(n): k for k, n in enumerate(self.nodes)}
        self.prod = {o: n for n in g.node for o in n.output}
        self.cons = collections.defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.cons[i].append(n)
        self.inits = {t.name: t for t in g.initializer}
        self.consts = dict(self.inits)
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
                self.consts[n.output[0]] = n.attribute[0].t
        self.inputs = {i.name for i in g.input}
        self.shapes = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                                        for d in t.shape.dim]
        for t in g.initializer:
            self.shapes[t.name] = list(t.dims)
        # shape-ish tensors: computed only from Shape/Size outputs and constants
        self.shapeish = set()
        for n in self.nodes:
            if n.op_type == "Constant":
                continue
            if n.op_type in SHAPE_SOURCES:
                self.shapeish.update(n.output)
                continue
            ins = [i for i in n.input if i and i not in self.consts]
            if ins and all(i in self.shapeish for i in ins):
                self.shapeish.update(n.output)

    def const(self, name):
        t = self.consts.get(name)
        return None if t is None or t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)

    def is_weight(self, name):
        """An initializer of rank >= 2 (or a Transpose of one: TorchScript lm_head after weight sharing)."""
        if name in self.inits and len(self.inits[name].dims) >= 2:
            return True
        p = self.prod.get(name)
        return p is not None and p.op_type == "Transpose" and p.input[0] in self.inits

    def anc(self, names, stop=lambda n: False):
        seen, stack = set(), [self.prod[x] for x in names if x in self.prod]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if stop(n):
                continue
            stack.extend(self.prod[i] for i in n.input if i in self.prod)
        return seen

    def desc(self, nodes):
        seen, stack = set(), list(nodes)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for o in n.output:
                stack.extend(self.cons[o])
        return seen

    def desc_data(self, nodes):
        """Descendants through data edges only (not through shape-ish tensors such as Slice ends from Shape)."""
        seen, stack = set(), list(nodes)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for o in n.output:
                if o not in self.shapeish:
                    stack.extend(self.cons[o])
        return seen

    def sval(self, name, depth=0):
        """Value of a shape-ish tensor as a list/scalar of ints and dim names ('?' when unknown)."""
        a = self.const(name)
        if a is not None:
            return a.tolist()
        n = self.prod.get(name)
        if n is None or depth > 12:
            return "?"
        op = n.op_type
        if op == "Shape":
            shp = self.shapes.get(n.input[0])
            at = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            if shp is None:
                return "?"
            return [d if d != "?" else f"dim{k}" for k, d in enumerate(shp)][at.get("start", 0):at.get("end", None)]
        if op in ("Cast", "Identity"):
            return self.sval(n.input[0], depth + 1)
        if op == "Where":  # TorchScript's "-1 means keep" guard: Where(Equal(s, -1 * ones), ones, s) -> s
            a = self.prod.get(n.input[1])
            if a is not None and a.op_type == "ConstantOfShape":
                return self.sval(n.input[2], depth + 1)
            return "?"
        if op == "Squeeze":
            v = self.sval(n.input[0], depth + 1)
            return v[0] if isinstance(v, list) and len(v) == 1 else v
        if op == "Unsqueeze":
            v = self.sval(n.input[0], depth + 1)
            return [v] if not isinstance(v, list) else v
        if op == "Gather":
            v, idx = self.sval(n.input[0], depth + 1), self.const(n.input[1])
            if isinstance(v, list) and idx is not None:
                return [v[int(i)] for i in idx] if idx.ndim else v[int(idx)]
            return "?"
        if op == "Concat":
            out = []
            for i in n.input:
                v = self.sval(i, depth + 1)
                out += v if isinstance(v, list) else [v]
            return out
        if op == "Reshape":
            v = self.sval(n.input[0], depth + 1)
            return v if isinstance(v, list) else [v]
        if op in ("Add", "Mul", "Div", "Sub"):
            a, b = (self.sval(i, depth + 1) for i in n.input)
            sym = {"Add": "+", "Mul": "*", "Div": "/", "Sub": "-"}[op]
            if isinstance(a, list) or isinstance(b, list):
                if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 1:
                    a, b = a[0], b[0]
                else:
                    return "?"
            if isinstance(a, int) and isinstance(b, int):
                return {"+": a + b, "*": a * b, "/": a // b if b else "?", "-": a - b}[sym]
            return f"{a}{sym}{b}"
        return "?"


def _fmt_attr(a):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, onnx.TensorProto):
        arr = numpy_helper.to_array(v)
        v = arr.tolist() if arr.size <= 4 else f"tensor{list(arr.shape)}"
    if isinstance(v, float):
        v = float(np.float32(v))
    return f"{a.name}={v}"


def _fmt_value(a):
    if a.size <= 8:
        vals = a.reshape(-1).tolist()
        vals = [float(np.float32(x)) if isinstance(x, float) else x for x in vals]
        return str(vals[0]) if a.ndim == 0 else str(vals) if a.ndim == 1 else f"{vals} shape {list(a.shape)}"
    return f"const{list(a.shape)} {a.dtype}"


def _attention_node(G):
    """Layer 0's Softmax (ai.onnx) or Attention node: the first in graph order."""
    return next(n for n in G.nodes if n.op_type in ("Softmax", "Attention") and n.domain in ("", "ai.onnx"))


def _skip_back(G, name, ops):
    while name in G.prod and G.prod[name].op_type in ops:
        name = G.prod[name].input[0]
    return name


def llama_block(path):
    """Layer 0 attention of a Llama export: a dict with the region listing and a one-line key path."""
    G = Graph(path)
    att = _attention_node(G)
    if att.op_type == "Attention":
        end, score, q_in, k_in, v_in = att, att, att.input[0], att.input[1], att.input[2]
    else:
        # Softmax <- Add(mask) <- Mul/Div(scale) <- MatMul(q, kT)   (sdpa-decomposed: MatMul(Mul(q), Mul(kT)))
        x = att.input[0]
        x = _skip_back(G, x, ("Add", "Mul", "Div", "Where", "Cast"))
        score = G.prod[x]
        assert score.op_type == "MatMul", score.op_type
        q_in, k_in = score.input
        nxt = att
        while True:
            c = [c for o in nxt.output for c in G.cons[o]]
            mm = [n for n in c if n.op_type == "MatMul"]
            if mm:
                end = mm[0]
                break
            nxt = next(n for n in c if n.op_type in ("IsNaN", "Where", "Cast"))
            if nxt.op_type == "IsNaN":
                nxt = next(n for n in G.cons[nxt.output[0]] if n.op_type == "Where")
        v_in = end.input[1]
    # projections: nearest MatMuls with a weight, upstream of q/k/v
    proj_stop = lambda n: n.op_type in ("MatMul", "Gemm") and any(G.is_weight(i) for i in n.input[1:])  # noqa: E731
    projs = {}
    for role, t in (("q", q_in), ("k", k_in), ("v", v_in)):
        found = [n for n in G.nodes if id(n) in G.anc([t], proj_stop) and proj_stop(n)]
        projs[role] = found[-1] if found else None
    # output projection: first weight MatMul downstream of end
    oproj = next(n for n in G.nodes if G.pos[id(n)] > G.pos[id(end)] and proj_stop(n) and id(n) in G.desc([end]))
    starts = [p for p in projs.values() if p is not None]
    region_ids = G.desc(starts) & G.anc([oproj.input[0]], proj_stop)
    region_ids |= {id(p) for p in starts} | {id(oproj)}
    # TorchScript's single-input Concat(past_key_values.i.key) in front of the real cache Concat
    for n in G.nodes:
        if n.op_type == "Concat" and len(n.input) == 1 and n.input[0] in G.inputs and any(
                id(c) in region_ids for c in G.cons[n.output[0]]):
            region_ids.add(id(n))
    region = [n for n in G.nodes if id(n) in region_ids]
    produced_in_region = {o for n in region for o in n.output}
    # tensors feeding the region from outside, by what they descend from
    pos_desc = G.desc(G.cons["position_ids"]) if "position_ids" in G.inputs else set()
    mask_desc = G.desc(G.cons["attention_mask"])
    names, ext = {}, {"cos/sin": [], "mask": []}
    for n in region:
        for i in n.input:
            if not i or i in produced_in_region or i in names or i in G.consts or i in G.shapeish:
                continue
            p = G.prod.get(i)
            if i in G.inputs:
                names[i] = i
            elif p is not None and id(p) in mask_desc:  # (checked first: shapes may come from position_ids)
                names[i] = f"%mask{len(ext['mask'])}"
                ext["mask"].append(i)
            elif p is not None and id(p) in pos_desc:
                kind = {"Cos": "cos", "Sin": "sin"}.get(p.op_type)
                if kind is None:
                    up = G.anc([i])
                    has = {x.op_type for x in G.nodes if id(x) in up}
                    kind = "cos" if "Cos" in has and "Sin" not in has else "sin" if "Sin" in has and "Cos" not in has else "rope"
                names[i] = f"%{kind}{len([v for v in names.values() if v.startswith('%' + kind)])}"
                ext["cos/sin"].append(i)
            else:
                names[i] = "%x" if not any(v == "%x" for v in names.values()) else f"%in{len(names)}"
    lines = []
    counter = [0]

    def ref(i):
        if not i:
            return "∅"
        if i in names:
            return names[i]
        a = G.const(i)
        if a is not None:
            return _fmt_value(a)
        if i in G.consts:
            t = G.consts[i]
            return f"W{list(t.dims)}"
        if i in G.shapeish:
            v = G.sval(i)
            return "shape" + (str(v).replace("'", "") if v != "?" else "(?)")
        return i

    hidden_ops = 0
    for n in region:
        if all(o in G.shapeish for o in n.output) or n.op_type == "Constant":
            hidden_ops += 1
            continue
        for o in n.output:
            if o in names:
                continue
            if o.startswith("present.") or o in ("logits",):
                names[o] = o
            else:
                counter[0] += 1
                names[o] = f"%{counter[0]}"
        role = next((r for r, p in projs.items() if p is n), "o" if n is oproj else None)
        attrs = [_fmt_attr(a) for a in n.attribute]
        dom = f"{n.domain}::" if n.domain not in ("", "ai.onnx") else ""
        shp = G.shapes.get(n.output[0])
        lines.append(f"{', '.join(names[o] for o in n.output)} = {dom}{n.op_type}({', '.join(ref(i) for i in n.input)})"
                     + (f" {{{', '.join(attrs)}}}" if attrs else "")
                     + (f"  -> {str(shp).replace(chr(39), '')}" if shp else "")
                     + (f"   # {role}_proj" if role else ""))

    def side(tensors, source):
        """Everything between a graph input and these tensors (shape arithmetic included)."""
        ids = G.anc(tensors)
        sub = [n for n in G.nodes if id(n) in ids and n.op_type != "Constant"]
        loc = {}
        out = []
        for n in sub:
            for k, o in enumerate(n.output):
                loc[o] = names.get(o) or f"%{source}{len(loc)}"

            def r(i):
                if not i:
                    return "∅"
                if i in loc and i not in n.output:
                    return loc[i]
                if i in G.inputs:
                    return i
                a = G.const(i)
                if a is not None:
                    return _fmt_value(a)
                if i in G.consts:
                    return f"W{list(G.consts[i].dims)}"
                return i
            attrs = [_fmt_attr(a) for a in n.attribute]
            shp = G.shapes.get(n.output[0])
            out.append(f"{', '.join(loc[o] for o in n.output)} = {n.op_type}({', '.join(r(i) for i in n.input)})"
                       + (f" {{{', '.join(attrs)}}}" if attrs else "")
                       + (f"  -> {str(shp).replace(chr(39), '')}" if shp else ""))
        return out

    # one-line key path: key projection -> ... -> score node (non-shape nodes on a path between them)
    def path_ops(src, dst):
        if src is None:
            return []
        ids = G.desc_data([src]) & (G.anc(dst.input) | {id(dst)})
        out = []
        for n in G.nodes:
            if id(n) in ids and not all(o in G.shapeish for o in n.output):
                attrs = [_fmt_attr(a) for a in n.attribute if a.name in ("perm", "axis", "scale", "is_causal",
                                                                         "interleaved", "num_heads", "q_num_heads",
                                                                         "kv_num_heads")]
                extra = [_fmt_value(G.const(i)) for i in n.input if G.const(i) is not None and G.const(i).size <= 4
                         and n.op_type in ("Mul", "Div")]
                if n.op_type in ("Mul",) and any(names.get(i, "").startswith(("%cos", "%sin")) for i in n.input):
                    extra.append(next(names[i] for i in n.input if names.get(i, "").startswith(("%cos", "%sin")))[1:4])
                out.append(n.op_type + (f"({', '.join(attrs + extra)})" if attrs or extra else ""))
        return out

    sm = att if att.op_type == "Softmax" else att
    return {"key_path": path_ops(projs["k"], sm), "query_path": path_ops(projs["q"], sm),
            "value_path": path_ops(projs["v"], end), "block": lines, "hidden_shape_nodes": hidden_ops,
            "rope": side(ext["cos/sin"], "r"), "mask": side(ext["mask"], "m"),
            "projection_outputs": {r: (p.output[0] if p is not None else None) for r, p in projs.items()},
            "names": {v: k for k, v in names.items()}}


def is_llama(path):
    m = onnx.load(path, load_external_data=False)
    return any(n.op_type in ("Cos", "Sin", "RotaryEmbedding") for n in m.graph.node)


def main(argv):
    full = "--full" in argv
    for p in [a for a in argv if a != "--full"]:
        print(p)
        if not is_llama(p):
            print("   ", " -> ".join(core(p)))
            continue
        b = llama_block(p)
        print("    key path:  ", " -> ".join(b["key_path"]))
        if full:
            print("    query path:", " -> ".join(b["query_path"]))
            print("    value path:", " -> ".join(b["value_path"]))
            print(f"    layer-0 attention block ({b['hidden_shape_nodes']} shape-arithmetic nodes folded into shape[...]):")
            for line in b["block"]:
                print("      " + line)
            print("    rotary inputs (from position_ids):")
            for line in b["rope"]:
                print("      " + line)
            print("    mask input (from attention_mask):")
            for line in b["mask"]:
                print("      " + line)


if __name__ == "__main__":
    main(sys.argv[1:])
