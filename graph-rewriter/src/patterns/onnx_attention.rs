//! One ONNX `Attention` node (opset 23) over 4-D BNSH inputs: dynamo's sdpa export at opset 23.
//! The cache Concat stays outside the node; its own past inputs are unused.

use crate::block::{assemble, AttentionBlock, KeyPath, Miss};
use lookat_onnx::graph::{attr_float, attr_int, GraphIndex};

pub fn match_at(g: &GraphIndex<'_>, attention: usize) -> Result<AttentionBlock, Miss> {
    let n = g.node(attention);
    let input = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
    let (Some(q4), Some(k_present), Some(v_present)) = (input(0), input(1), input(2)) else {
        return Err("Attention node lacks Q, K or V".into());
    };
    if input(4).is_some() || input(5).is_some() {
        return Err("Attention node uses its own past_key/past_value inputs; only the external cache Concat form is supported".into());
    }
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("Attention node produces present/qk outputs, which are not supported".into());
    }
    if attr_float(n, "softcap").is_some_and(|c| c != 0.0) {
        return Err("Attention softcap is not supported".into());
    }
    if attr_int(n, "is_causal") == Some(1) {
        return Err(
            "Attention is_causal=1 is not produced by the known exporters; not supported yet"
                .into(),
        );
    }
    let masks: Vec<String> = input(3).cloned().into_iter().collect();
    let scale = attr_float(n, "scale");
    assemble(
        g,
        "onnx-attention",
        n.name.clone(),
        q4,
        KeyPath::Bnsh(k_present.clone()),
        v_present,
        &n.output[0],
        &masks,
        scale,
    )
}
