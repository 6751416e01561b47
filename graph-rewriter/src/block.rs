//! What a matcher finds: the boundary of one attention block, and the shared pieces of matching
//! (head split and merge, the key/value cache concatenation, the mask) that every exporter family
//! builds the same way.

use lookat_onnx::graph::{attr_int, attr_ints, is_op, GraphIndex};

/// Why a candidate is not an attention block this matcher rewrites.
pub type Miss = String;

/// The boundary tensors of one attention block; everything between them is replaced.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    pub pattern: &'static str,
    /// The node the match started from (Softmax or Attention), for messages.
    pub anchor: String,
    /// `[B, S, E]` projections of the new tokens.
    pub query: String,
    pub key: String,
    pub value: String,
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
    pub heads: usize,
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
        if is_rotary(g, x4) {
            return Err(format!(
                "{what}: rotary position embedding (Sin/Cos applied to the heads) is not supported"
            ));
        }
        return Err(format!(
            "{what}: expected Transpose(perm 0,2,1,3) splitting heads, found {}",
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
    let mut x = sn.input[0].clone();
    for _ in 0..3 {
        let n = g.node(g.producer(&x)?);
        if is_op(n, "Reshape") || is_op(n, "Add") {
            x = n.input[0].clone();
            continue;
        }
        let w = g.initializer(n.input.get(1)?)?;
        if w.dims.len() != 2 {
            return None;
        }
        let cols = if is_op(n, "Gemm") && attr_int(n, "transB") == Some(1) {
            w.dims[0]
        } else {
            w.dims[1]
        };
        return (cols > 0 && cols % 3 == 0).then_some(cols as usize / 3);
    }
    None
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

/// The three projections must be outputs 0, 1, 2 of one Split (GPT-2's fused `c_attn`); anything
/// else is cross-attention or an attention this tool does not know.
pub fn check_self_attention(g: &GraphIndex<'_>, q: &str, k: &str, v: &str) -> Result<(), Miss> {
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
/// pattern finds in its own way.
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
    let (query, q_dims) = split_heads(g, q4, "query")?;
    let v_cache = cache_concat(g, v_present, "value")?;
    let (k_cache, key, k_dims) = match &keys {
        KeyPath::Bnsh(k_present) => {
            let k_cache = cache_concat(g, k_present, "key")?;
            let k4 = k_cache
                .as_ref()
                .map_or(k_present.to_string(), |c| c.1.clone());
            let (key, dims) = split_heads(g, &k4, "key")?;
            (k_cache, key, dims)
        }
        KeyPath::Bsnh(k_bsnh) => {
            let r = g
                .producer_op(k_bsnh, "Reshape")
                .ok_or("transposed keys do not come from a head-split Reshape")?;
            let rn = g.node(r);
            (
                None,
                rn.input[0].clone(),
                reshape_tail_dims(g, &rn.input[1]),
            )
        }
    };
    let v4 = v_cache
        .as_ref()
        .map_or(v_present.to_string(), |c| c.1.clone());
    let (value, _) = split_heads(g, &v4, "value")?;
    check_self_attention(g, &query, &key, &value)?;
    let cache = match (k_cache, v_cache) {
        (Some((past_key, _)), Some((past_value, _))) => Some(CacheIo {
            past_key,
            past_value,
            present_key: match &keys {
                KeyPath::Bnsh(k) => k.clone(),
                KeyPath::Bsnh(_) => return Err("cache on values but not on keys".into()),
            },
            present_value: v_present.to_string(),
        }),
        (None, None) => None,
        _ => return Err("only one of key and value has a cache Concat".into()),
    };
    if let (Some((Some(hq), _)), Some((Some(hk), _))) = (q_dims, k_dims) {
        if hq != hk {
            return Err(format!(
                "grouped-query attention ({hq} query heads, {hk} key/value heads) is not supported"
            ));
        }
    }
    let (h, d) = q_dims.or(k_dims).unwrap_or((None, None));
    let width = g.producer(&query).and_then(|sp| fused_qkv_width(g, sp));
    let (heads, head_dim) = match (h, d, width) {
        (Some(h), Some(d), _) => (h, d),
        (None, Some(d), Some(e)) if e % d == 0 => (e / d, d),
        (Some(h), None, Some(e)) if e % h == 0 => (h, e / h),
        _ => return Err(format!(
            "could not read the number of heads and head size (head-split shape gives H={h:?} D={d:?}, \
             QKV width {width:?})"
        )),
    };
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
    Ok(AttentionBlock {
        pattern,
        anchor,
        query,
        key,
        value,
        cache,
        output,
        output_rank,
        mask: masks.iter().find_map(|m| mask_input(g, m)),
        scale,
        heads,
        head_dim,
    })
}
