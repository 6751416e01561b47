//! What a matcher finds: the boundary of one attention block, and the shared pieces of matching
//! (head split and merge, the key/value cache concatenation, the mask) that every exporter family
//! builds the same way.

use lookat_onnx::graph::{attr_int, attr_ints, is_op, GraphIndex};
use onnx_protobuf::NodeProto;

/// Why a candidate is not an attention block this matcher rewrites.
pub type Miss = String;

/// The boundary tensors of one attention block; everything between them is replaced.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    pub pattern: &'static str,
    /// The node the match started from (Softmax or Attention), for messages.
    pub anchor: String,
    /// What the op reads for the new tokens: the `[B, S, H·D]` projections (GPT-2's fused QKV
    /// split) or, when `head_major`, the `[B, H, S, D]` head-split tensors after rotary
    /// embeddings (queries and keys rotated, as they are cached).
    pub query: String,
    pub key: String,
    pub value: String,
    /// Whether `query`/`key`/`value` are `[B, H, S, D]`.
    pub head_major: bool,
    /// Whether the queries and keys went through a rotary position embedding (kept in the graph:
    /// the op receives rotated vectors).
    pub rotary: bool,
    /// Cache graph inputs/outputs, absent in exports without a cache.
    pub cache: Option<CacheIo>,
    /// The tensor that carries the merged heads to the output projection.
    pub output: String,
    /// Its rank: 3 for `[B, S, E]`, 2 for `[B*S, E]`.
    pub output_rank: usize,
    /// The int64 `[B, P+S]` padding-mask graph input, when the model has one.
    pub mask: Option<String>,
    /// Softmax scale, when it is a constant in the graph (`None`: 1/sqrt(D) computed at run time).
    pub scale: Option<f32>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Debug, Clone)]
pub struct CacheIo {
    pub past_key: String,
    pub past_value: String,
    pub present_key: String,
    pub present_value: String,
}

/// (H, D) as far as a head-split shape tells them.
pub type HeadDims = (Option<usize>, Option<usize>);

/// `x4 = Transpose(Reshape(x, [B, S, H, D]), perm 0,2,1,3)`: returns (x, H, D).
pub fn split_heads(
    g: &GraphIndex<'_>,
    x4: &str,
    what: &str,
) -> Result<(String, Option<HeadDims>), Miss> {
    let Some(t) = g.producer_op(x4, "Transpose") else {
        let rotary = if is_rotary(g, x4) {
            " (Sin/Cos reach it, but not as a rotary embedding of the split heads this tool knows)"
        } else {
            ""
        };
        return Err(format!(
            "{what}: expected Transpose(perm 0,2,1,3) splitting heads, found {}{rotary}",
            describe(g, x4)
        ));
    };
    let tn = g.node(t);
    if attr_ints(tn, "perm").as_deref() != Some(&[0, 2, 1, 3]) {
        return Err(format!(
            "{what}: head-split Transpose has perm {:?}, expected [0,2,1,3]",
            attr_ints(tn, "perm")
        ));
    }
    let r = g
        .producer_op(&tn.input[0], "Reshape")
        .ok_or_else(|| format!("{what}: expected Reshape to [B,S,H,D] before the Transpose"))?;
    let rn = g.node(r);
    Ok((rn.input[0].clone(), reshape_tail_dims(g, &rn.input[1])))
}

/// Rotary embeddings multiply the heads by Sin/Cos tables just before attention.
fn is_rotary(g: &GraphIndex<'_>, x4: &str) -> bool {
    g.ancestors(x4, 40)
        .into_iter()
        .any(|i| is_op(g.node(i), "Sin") || is_op(g.node(i), "Cos"))
        || g.producer(x4)
            .is_some_and(|i| g.node(i).op_type == "RotaryEmbedding")
}

/// The last two entries of a Reshape's target shape, each when it is a positive constant:
/// (H, D). Exporters write -1 for H at times, so either may be missing.
pub fn reshape_tail_dims(
    g: &GraphIndex<'_>,
    shape: &str,
) -> Option<(Option<usize>, Option<usize>)> {
    let pos = |v: Option<f64>| v.filter(|&v| v >= 1.0).map(|v| v as usize);
    if let Some(v) = g.constant(shape) {
        return (v.len() == 4).then(|| (pos(Some(v[2])), pos(Some(v[3]))));
    }
    // TorchScript/dynamo build the shape at run time: Concat(batch, seq, H or -1, D).
    let c = g.node(g.producer_op(shape, "Concat")?);
    if c.input.len() != 4 {
        return None;
    }
    Some((pos(g.scalar(&c.input[2])), pos(g.scalar(&c.input[3]))))
}

/// When `x` is a rotary position embedding of a head-split tensor, that tensor. Recognised forms:
/// an ONNX / `com.microsoft` `RotaryEmbedding` node, and Hugging Face's decomposed rotate-half
/// `Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, D/2:)), Slice(x, :D/2)), sin))` (either operand
/// order of the Add and the Muls).
pub fn through_rotary(g: &GraphIndex<'_>, x: &str) -> Option<String> {
    let n = g.node(g.producer(x)?);
    if n.op_type == "RotaryEmbedding" {
        return n.input.first().cloned();
    }
    if !is_op(n, "Add") || n.input.len() != 2 {
        return None;
    }
    // Mul(a, b): the operands, either order.
    let mul = |t: &str| -> Option<[String; 2]> {
        let m = g.node(g.producer_op(t, "Mul")?);
        Some([m.input[0].clone(), m.input[1].clone()])
    };
    // Concat(Neg(Slice(x)), Slice(x)) on the last axis: x.
    let rotate_half = |t: &str| -> Option<String> {
        let c = g.node(g.producer_op(t, "Concat")?);
        if c.input.len() != 2 || !matches!(attr_int(c, "axis"), Some(-1) | Some(3)) {
            return None;
        }
        let neg = g.node(g.producer_op(&c.input[0], "Neg")?);
        let upper = g.node(g.producer_op(&neg.input[0], "Slice")?);
        let lower = g.node(g.producer_op(&c.input[1], "Slice")?);
        (upper.input[0] == lower.input[0]).then(|| lower.input[0].clone())
    };
    for (plain, rotated) in [(0, 1), (1, 0)] {
        let (Some(p), Some(r)) = (mul(&n.input[plain]), mul(&n.input[rotated])) else {
            continue;
        };
        for half in &r {
            if let Some(x) = rotate_half(half) {
                if p.contains(&x) {
                    return Some(x);
                }
            }
        }
    }
    None
}

/// Hugging Face's `repeat_kv`: `Reshape(Expand(Unsqueeze(x, axes=[2]), [B, H_kv, G, T, D]),
/// [B, H_kv·G, T, D])`. Returns `x` (the `[B, H_kv, T, D]` tensor) or `t` itself when it is not
/// repeated.
pub fn unrepeat_kv(g: &GraphIndex<'_>, t: &str) -> String {
    let peel = || -> Option<String> {
        let r = g.node(g.producer_op(t, "Reshape")?);
        let e = g.node(g.producer_op(&r.input[0], "Expand")?);
        let u = g.node(g.producer_op(&e.input[0], "Unsqueeze")?);
        let axes = match u.input.get(1) {
            Some(a) => g.constant(a)?,
            None => attr_ints(u, "axes")?.iter().map(|&v| v as f64).collect(),
        };
        (axes == [2.0]).then(|| u.input[0].clone())
    };
    peel().unwrap_or_else(|| t.to_string())
}

/// The `MatMul`/`Gemm` node projecting into `tensor`, through a `Reshape` or a bias `Add`.
fn projection<'g>(g: &GraphIndex<'g>, tensor: &str) -> Option<&'g NodeProto> {
    let constant = |t: &str| g.initializer(t).is_some() || g.producer_op(t, "Constant").is_some();
    let mut x = tensor.to_string();
    for _ in 0..3 {
        let n = g.node(g.producer(&x)?);
        if is_op(n, "Reshape") {
            x = n.input[0].clone();
        } else if is_op(n, "Add") {
            // Follow the operand that is not the bias.
            x = match (constant(&n.input[0]), constant(&n.input[1])) {
                (false, true) => n.input[0].clone(),
                (true, false) => n.input[1].clone(),
                _ => return None,
            };
        } else {
            return (is_op(n, "MatMul") || is_op(n, "Gemm")).then_some(n);
        }
    }
    None
}

/// Output width of a projection: its weight's columns (rows for `Gemm` with `transB`), when the
/// weight is an initializer.
fn weight_columns(g: &GraphIndex<'_>, n: &NodeProto) -> Option<usize> {
    let w = g.initializer(n.input.get(1)?)?;
    if w.dims.len() != 2 {
        return None;
    }
    let cols = if is_op(n, "Gemm") && attr_int(n, "transB") == Some(1) {
        w.dims[0]
    } else {
        w.dims[1]
    };
    (cols > 0).then_some(cols as usize)
}

/// The width of the projection producing a `[B, S, width]` tensor.
pub fn projection_width(g: &GraphIndex<'_>, tensor: &str) -> Option<usize> {
    weight_columns(g, projection(g, tensor)?)
}

/// The tensor a projection reads: the hidden states of the layer.
fn projection_input(g: &GraphIndex<'_>, tensor: &str) -> Option<String> {
    projection(g, tensor).map(|n| n.input[0].clone())
}

/// E = H·D from the fused QKV projection feeding `split`: its split sizes, or the width of the
/// `Gemm`/`MatMul` weight before it (3·E columns).
pub fn fused_qkv_width(g: &GraphIndex<'_>, split: usize) -> Option<usize> {
    let sn = g.node(split);
    if let Some(sizes) = sn
        .input
        .get(1)
        .filter(|s| !s.is_empty())
        .and_then(|s| g.constant(s))
    {
        return sizes.first().map(|&e| e as usize);
    }
    projection_width(g, &sn.input[0])
        .filter(|cols| cols % 3 == 0)
        .map(|cols| cols / 3)
}

/// `present = Concat(past, x4, axis -2 | 2)` with `past` a graph input (maybe behind a one-input
/// Concat). Returns (past input, new-token tensor). A tensor that is no Concat means no cache.
pub fn cache_concat(
    g: &GraphIndex<'_>,
    present: &str,
    what: &str,
) -> Result<Option<(String, String)>, Miss> {
    let Some(c) = g.producer_op(present, "Concat") else {
        return Ok(None);
    };
    let cn = g.node(c);
    let axis = attr_int(cn, "axis");
    if cn.input.len() != 2 || !matches!(axis, Some(-2) | Some(2)) {
        return Err(format!(
            "{what}: cache Concat has {} inputs on axis {axis:?}; expected 2 on the token axis",
            cn.input.len()
        ));
    }
    let mut past = cn.input[0].as_str();
    if let Some(inner) = g.producer_op(past, "Concat") {
        let inn = g.node(inner);
        if inn.input.len() == 1 {
            past = inn.input[0].as_str();
        }
    }
    if !g.inputs.contains(past) {
        return Err(format!(
            "{what}: the past half of the cache Concat is '{past}', not a graph input"
        ));
    }
    if !g.outputs.contains(present) {
        return Err(format!(
            "{what}: the cache Concat output '{present}' is not a graph output"
        ));
    }
    Ok(Some((past.to_string(), cn.input[1].clone())))
}

/// `out = Reshape(Transpose(o4, perm 0,2,1,3), [B, S, E] | [B*S, E])`: returns `out` and its rank. Other readers of the
/// intermediate tensors may only be `Shape` nodes (TorchScript's shape arithmetic).
pub fn merge_heads(g: &GraphIndex<'_>, o4: &str) -> Result<(String, usize), Miss> {
    // TorchScript's sdpa export first reshapes the output to its own 4-D shape (a no-op).
    let mut o4 = o4.to_string();
    if let Ok(r) = only_consumer(g, &o4, "Reshape", "attention output") {
        let rn = g.node(r);
        let rank4 = g.constant(&rn.input[1]).map(|v| v.len()).or_else(|| {
            g.producer_op(&rn.input[1], "Concat")
                .map(|c| g.node(c).input.len())
        });
        if rank4 != Some(4) {
            return Err(format!(
                "attention output is reshaped by '{}' to something other than 4-D",
                rn.name
            ));
        }
        o4 = rn.output[0].clone();
    }
    let t = only_consumer(g, &o4, "Transpose", "attention output")?;
    let tn = g.node(t);
    if attr_ints(tn, "perm").as_deref() != Some(&[0, 2, 1, 3]) {
        return Err(format!(
            "head-merge Transpose has perm {:?}, expected [0,2,1,3]",
            attr_ints(tn, "perm")
        ));
    }
    let r = only_consumer(g, &tn.output[0], "Reshape", "merged heads")?;
    let rn = g.node(r);
    // [B, S, E] (TorchScript) or [B*S, E] (dynamo, feeding Gemm directly).
    let rank = g.constant(&rn.input[1]).map(|v| v.len()).or_else(|| {
        g.producer_op(&rn.input[1], "Concat")
            .map(|c| g.node(c).input.len())
    });
    match rank {
        Some(r @ (2 | 3)) => Ok((rn.output[0].clone(), r)),
        _ => Err(format!(
            "merged heads reshaped by '{}' to rank {rank:?}; expected [B,S,E] or [B*S,E]",
            rn.name
        )),
    }
}

/// The single consumer of `t` of type `op`, all others being `Shape`.
fn only_consumer(g: &GraphIndex<'_>, t: &str, op: &str, what: &str) -> Result<usize, Miss> {
    let mut found = None;
    for &c in g.consumers(t) {
        let n = g.node(c);
        if is_op(n, op) && found.is_none() {
            found = Some(c);
        } else if !is_op(n, "Shape") {
            return Err(format!(
                "{what} '{t}' also feeds {} '{}' (expected one {op} and Shape reads)",
                n.op_type, n.name
            ));
        }
    }
    found.ok_or_else(|| format!("{what} '{t}' feeds no {op}"))
}

/// The padding-mask graph input the mask tensor depends on: an int64 rank-2 input that is not
/// an embedding index (token and position ids are also int64 [B, S] and feed the mask's shape
/// arithmetic). A name containing "mask" wins among several.
pub fn mask_input(g: &GraphIndex<'_>, mask_tensor: &str) -> Option<String> {
    let is_int64_rank2 = |name: &str| {
        g.graph.input.iter().any(|vi| {
            vi.name == name
                && matches!(
                    vi.type_.as_ref().and_then(|t| t.value.as_ref()),
                    Some(onnx_protobuf::type_proto::Value::TensorType(tt))
                        if tt.elem_type == 7 && tt.shape.as_ref().is_some_and(|s| s.dim.len() == 2)
                )
        })
    };
    let embedding_index = |name: &str| {
        g.consumers(name).iter().any(|&c| {
            let n = g.node(c);
            is_op(n, "Gather")
                && n.input.get(1).is_some_and(|i| i == name)
                && g.initializer(&n.input[0]).is_some()
        })
    };
    let mut found: Vec<&str> = g
        .input_ancestors(mask_tensor)
        .into_iter()
        .filter(|n| is_int64_rank2(n) && !embedding_index(n))
        .collect();
    found.sort_by_key(|n| !n.contains("mask"));
    found.first().map(|s| s.to_string())
}

/// Evidence that a mask (additive bias or boolean) is causal: it is built with a position
/// comparison (`LessOrEqual`, `Less`, `Greater`, `GreaterOrEqual`), `Trilu`, or by slicing a
/// lower-triangular constant (GPT-2's `attn.bias` buffer).
pub fn causal_evidence(g: &GraphIndex<'_>, mask_tensor: &str) -> bool {
    g.ancestors(mask_tensor, 100_000).into_iter().any(|i| {
        let n = g.node(i);
        ["LessOrEqual", "Less", "Greater", "GreaterOrEqual", "Trilu"]
            .iter()
            .any(|op| is_op(n, op))
            || (is_op(n, "Slice")
                && g.initializer(&n.input[0])
                    .is_some_and(|t| t.dims.len() == 4 && t.dims[2] == t.dims[3]))
    })
}

/// The three projections must be outputs 0, 1, 2 of one Split (GPT-2's fused `c_attn`) or three
/// projections of the same hidden states (Llama's q/k/v_proj); anything else is cross-attention
/// or an attention this tool does not know.
pub fn check_self_attention(g: &GraphIndex<'_>, q: &str, k: &str, v: &str) -> Result<(), Miss> {
    if let [Some(a), Some(b), Some(c)] = [q, k, v].map(|t| projection_input(g, t)) {
        if a == b && b == c {
            return Ok(());
        }
    }
    let p = [q, k, v].map(|t| g.producer(t));
    match p {
        [Some(a), Some(b), Some(c)] if a == b && b == c && is_op(g.node(a), "Split") => {
            let outs = &g.node(a).output;
            if outs.len() == 3 && outs[0] == q && outs[1] == k && outs[2] == v {
                Ok(())
            } else {
                Err("query/key/value are outputs of one Split but not in order q, k, v".into())
            }
        }
        _ => Err(format!(
            "query, key and value do not come from one Split of a fused QKV projection \
             (producers: {}, {}, {}): cross-attention or separate projections are not supported",
            describe(g, q),
            describe(g, k),
            describe(g, v)
        )),
    }
}

/// "Op 'name'" of the producer of a tensor, for messages.
pub fn describe(g: &GraphIndex<'_>, tensor: &str) -> String {
    match g.producer(tensor) {
        Some(i) => format!("{} '{}'", g.node(i).op_type, g.node(i).name),
        None if g.inputs.contains(tensor) => format!("graph input '{tensor}'"),
        None if g.initializer(tensor).is_some() => format!("initializer '{tensor}'"),
        None => format!("'{tensor}' (no producer)"),
    }
}

/// Where the keys enter the scores.
pub enum KeyPath {
    /// `[B, H, T, D]` keys: the present key cache (cache exports) or the head-split new keys.
    Bnsh(String),
    /// `[B, S, H, D]` keys straight from the head-split Reshape (TorchScript without cache builds
    /// Kᵀ with one Transpose(perm 0,2,3,1)): the Reshape's output.
    Bsnh(String),
}

/// Completes a block from q4 / k_present / v_present / the 4-D attention output, which every
/// pattern finds in its own way. Handles what GPT-2 and Llama exports put between them and the
/// projections: a rotary embedding on the queries and new keys (kept: the op reads rotated
/// vectors), `repeat_kv` on the cached keys and values (grouped-query attention), the cache
/// Concat, the head split.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    g: &GraphIndex<'_>,
    pattern: &'static str,
    anchor: String,
    q4: &str,
    keys: KeyPath,
    v_present: &str,
    o4: &str,
    masks: &[String],
    scale: Option<f32>,
) -> Result<AttentionBlock, Miss> {
    let q_split = through_rotary(g, q4);
    let (query, q_dims) = split_heads(g, q_split.as_deref().unwrap_or(q4), "query")?;
    let v_present = unrepeat_kv(g, v_present);
    let v_cache = cache_concat(g, &v_present, "value")?;
    let v4 = v_cache
        .as_ref()
        .map_or(v_present.to_string(), |c| c.1.clone());
    let (k_cache, k4, key, k_dims, k_rotary) = match &keys {
        KeyPath::Bnsh(k_present) => {
            let k_present = unrepeat_kv(g, k_present);
            let k_cache = cache_concat(g, &k_present, "key")?;
            let k4 = k_cache.as_ref().map_or(k_present.clone(), |c| c.1.clone());
            let k_split = through_rotary(g, &k4);
            let (key, dims) = split_heads(g, k_split.as_deref().unwrap_or(&k4), "key")?;
            let cache = k_cache.map(|(past, _)| (past, k_present));
            (cache, k4, key, dims, k_split.is_some())
        }
        KeyPath::Bsnh(k_bsnh) => {
            let r = g
                .producer_op(k_bsnh, "Reshape")
                .ok_or("transposed keys do not come from a head-split Reshape")?;
            let rn = g.node(r);
            (
                None,
                String::new(),
                rn.input[0].clone(),
                reshape_tail_dims(g, &rn.input[1]),
                false,
            )
        }
    };
    let (value, v_dims) = split_heads(g, &v4, "value")?;
    check_self_attention(g, &query, &key, &value)?;
    if q_split.is_some() != k_rotary {
        return Err("a rotary embedding is applied to only one of the queries and the keys".into());
    }
    let cache = match (k_cache, v_cache) {
        (Some((past_key, present_key)), Some((past_value, _))) => Some(CacheIo {
            past_key,
            past_value,
            present_key,
            present_value: v_present.to_string(),
        }),
        (None, None) => None,
        _ => return Err("only one of key and value has a cache Concat".into()),
    };

    // Head size from the head-split shapes; head counts from them or from the projection widths.
    let fused = g
        .producer_op(&query, "Split")
        .and_then(|sp| fused_qkv_width(g, sp));
    let width = |t: &str| fused.or_else(|| projection_width(g, t));
    let d = [q_dims, k_dims, v_dims]
        .iter()
        .find_map(|dims| dims.and_then(|(_, d)| d))
        .or_else(|| match (q_dims, width(&query)) {
            (Some((Some(h), _)), Some(e)) if e % h == 0 => Some(e / h),
            _ => None,
        })
        .ok_or("could not read the head size from the head-split shapes")?;
    let count = |dims: Option<HeadDims>, t: &str, what: &str| -> Result<usize, Miss> {
        match (dims.and_then(|(h, _)| h), width(t)) {
            (Some(h), _) => Ok(h),
            (None, Some(e)) if e % d == 0 => Ok(e / d),
            (None, w) => Err(format!(
                "could not read the number of {what} heads (head size {d}, projection width {w:?})"
            )),
        }
    };
    let heads = count(q_dims, &query, "query")?;
    let kv_heads = count(k_dims, &key, "key")?;
    if kv_heads == 0 || heads % kv_heads != 0 || count(v_dims, &value, "value")? != kv_heads {
        return Err(format!(
            "{heads} query heads cannot share {kv_heads} key/value heads evenly"
        ));
    }
    let (output, output_rank) = merge_heads(g, o4)?;
    if masks.is_empty() {
        return Err("no mask reaches the scores: LookatAttention is causal, and this attention is not (no causal mask)".into());
    }
    if !masks.iter().any(|m| causal_evidence(g, m)) {
        return Err(format!(
            "the mask(s) {masks:?} show no causal construction (no position comparison, Trilu or \
             triangular constant): LookatAttention is causal, this attention may not be"
        ));
    }
    // GPT-2 keeps its [B, S, E] projections; rotary or grouped-query attention hands the op the
    // head-split tensors after the rotary embedding.
    let head_major = q_split.is_some() || kv_heads != heads;
    let (query, key, value) = if head_major {
        if matches!(keys, KeyPath::Bsnh(_)) {
            return Err("head-major keys with a [B, S, H, D] key path are not supported".into());
        }
        (q4.to_string(), k4, v4)
    } else {
        (query, key, value)
    };
    Ok(AttentionBlock {
        pattern,
        anchor,
        query,
        key,
        value,
        head_major,
        rotary: q_split.is_some(),
        cache,
        output,
        output_rank,
        mask: masks.iter().find_map(|m| mask_input(g, m)),
        scale,
        heads,
        kv_heads,
        head_dim: d,
    })
}
