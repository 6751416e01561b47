//! `Softmax(mask(Mul(MatMul(q, Kᵀ), c)))` or `Div(..., c)`: eager attention of TorchScript,
//! dynamo and optimum exports.

use crate::block::{assemble, AttentionBlock, Miss};
use lookat_onnx::graph::{is_op, GraphIndex};

use crate::scores::{peel_masks, probs_times_values, scale_factor, untranspose_keys};

pub fn match_at(g: &GraphIndex<'_>, softmax: usize) -> Result<AttentionBlock, Miss> {
    let (v_present, o4) = probs_times_values(g, softmax)?;
    let (mut scores, mut masks) = peel_masks(g, g.node(softmax).input[0].clone());
    // The scale sits between the MatMul and the mask(s).
    let n = g.node(g.producer(&scores).ok_or("scores have no producer")?);
    let scale = if is_op(n, "Mul") {
        let (c, other) = if g.scalar(&n.input[1]).is_some() || scale_factor(g, &n.input[1]).is_ok()
        {
            (&n.input[1], &n.input[0])
        } else {
            (&n.input[0], &n.input[1])
        };
        let f = scale_factor(g, c)?;
        scores = other.clone();
        f
    } else if is_op(n, "Div") {
        let f = scale_factor(g, &n.input[1])?.map(|d| 1.0 / d);
        scores = n.input[0].clone();
        f
    } else {
        return Err(format!(
            "no Mul/Div scale after the QK MatMul (found {} '{}')",
            n.op_type, n.name
        ));
    };
    // GPT-2 4.x applies the causal Where after the scale: peel once more.
    let (s2, more) = peel_masks(g, scores);
    scores = s2;
    masks.extend(more);
    let mm = g.producer_op(&scores, "MatMul").ok_or_else(|| {
        format!(
            "scaled scores come from {}, not MatMul(q, Kᵀ)",
            crate::block::describe(g, &scores)
        )
    })?;
    let q4 = g.node(mm).input[0].clone();
    let k_present = untranspose_keys(g, &g.node(mm).input[1])?;
    if g.producer_op(&q4, "Mul").is_some() {
        return Err(
            "the query is scaled before the MatMul as well: that is the sdpa-decomposed pattern"
                .into(),
        );
    }
    assemble(
        g,
        "scaled-scores",
        g.node(softmax).name.clone(),
        &q4,
        k_present,
        &v_present,
        &o4,
        &masks,
        scale.map(|s| s as f32),
    )
}
