//! onnxruntime's fused `com.microsoft.MultiHeadAttention` over `[B, S, E]` projections with a
//! separate `[B, H, P, D]` past key/value (what ORT's transformer optimizer and hand-built graphs
//! emit). It maps one-to-one onto LookatAttention. (`com.microsoft.Attention` is refused by name:
//! `patterns::UNSUPPORTED`.)

use crate::block::{
    check_self_attention, fused_qkv_width, mask_input, AttentionBlock, CacheIo, Miss,
};
use lookat_onnx::graph::{attr_float, attr_int, GraphIndex};

pub fn match_multi_head_attention(g: &GraphIndex<'_>, i: usize) -> Result<AttentionBlock, Miss> {
    let n = g.node(i);
    let input = |k: usize| n.input.get(k).filter(|s| !s.is_empty()).cloned();
    let (Some(q), Some(k), Some(v)) = (input(0), input(1), input(2)) else {
        return Err(
            "packed QKV (query only) is not supported; expected separate query, key and value"
                .into(),
        );
    };
    if input(3).is_some() {
        return Err("the fused projection bias input is not supported".into());
    }
    if input(5).is_some() {
        return Err(
            "an attention_bias input (e.g. ALiBi or relative positions) is not supported".into(),
        );
    }
    if input(8).is_some() || input(9).is_some() {
        return Err(
            "past_sequence_length / cache_indirection (beam search buffers) are not supported"
                .into(),
        );
    }
    if attr_int(n, "unidirectional") != Some(1) {
        return Err(
            "unidirectional is not 1: this attention is not causal (no causal mask)".into(),
        );
    }
    check_self_attention(g, &q, &k, &v)?;
    let heads = attr_int(n, "num_heads")
        .filter(|&h| h > 0)
        .ok_or("num_heads missing")? as usize;
    let width = g
        .producer(&q)
        .and_then(|s| fused_qkv_width(g, s))
        .ok_or("could not read the hidden size from the QKV projection")?;
    if width % heads != 0 {
        return Err(format!(
            "hidden size {width} is not a multiple of num_heads={heads}"
        ));
    }
    let out = |k: usize| n.output.get(k).filter(|s| !s.is_empty()).cloned();
    let cache = match (input(6), input(7), out(1), out(2)) {
        (Some(pk), Some(pv), Some(ck), Some(cv)) => {
            for (t, what) in [(&pk, "past_key"), (&pv, "past_value")] {
                if !g.inputs.contains(t.as_str()) {
                    return Err(format!("{what} '{t}' is not a graph input"));
                }
            }
            for (t, what) in [(&ck, "present_key"), (&cv, "present_value")] {
                if !g.outputs.contains(t.as_str()) {
                    return Err(format!("{what} '{t}' is not a graph output"));
                }
            }
            Some(CacheIo {
                past_key: pk,
                past_value: pv,
                present_key: ck,
                present_value: cv,
            })
        }
        (None, None, None, None) => None,
        _ => return Err("past and present key/value must all be present or all absent".into()),
    };
    if out(3).is_some() {
        return Err("the qk output is not supported".into());
    }
    Ok(AttentionBlock {
        pattern: "ort-multi-head-attention",
        anchor: n.name.clone(),
        query: q,
        key: k,
        value: v,
        head_major: false,
        rotary: false,
        cache,
        output: n.output[0].clone(),
        output_rank: 3,
        mask: input(4).and_then(|m| mask_input(g, &m)),
        scale: attr_float(n, "scale").filter(|&s| s != 0.0),
        heads,
        kv_heads: heads,
        head_dim: width / heads,
    })
}
