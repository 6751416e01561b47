//! `Softmax(mask(MatMul(Mul(q, √s), Mul(Kᵀ, √s))))` with the NaN guard after the Softmax:
//! `scaled_dot_product_attention` as TorchScript, dynamo (opset 18) and optimum decompose it.

use crate::block::{assemble, AttentionBlock, Miss};
use lookat_onnx::graph::{is_op, GraphIndex};

use crate::scores::{peel_masks, probs_times_values, scale_factor, untranspose_keys};

/// `Mul(x, c)` → (x, c), either operand order.
fn scaled_operand(g: &GraphIndex<'_>, t: &str, what: &str) -> Result<(String, Option<f64>), Miss> {
    let m = g.producer_op(t, "Mul").ok_or_else(|| {
        format!(
            "{what} is not scaled before the MatMul (found {})",
            crate::block::describe(g, t)
        )
    })?;
    let n = g.node(m);
    for (x, c) in [(0, 1), (1, 0)] {
        if let Ok(f) = scale_factor(g, &n.input[c]) {
            return Ok((n.input[x].clone(), f));
        }
    }
    Err(format!("{what} Mul '{}' has no scalar factor", n.name))
}

pub fn match_at(g: &GraphIndex<'_>, softmax: usize) -> Result<AttentionBlock, Miss> {
    let (v_present, o4) = probs_times_values(g, softmax)?;
    let (scores, masks) = peel_masks(g, g.node(softmax).input[0].clone());
    let mm = g
        .producer(&scores)
        .filter(|&i| is_op(g.node(i), "MatMul"))
        .ok_or_else(|| {
            format!(
                "masked scores come from {}, not straight from MatMul",
                crate::block::describe(g, &scores)
            )
        })?;
    let (q4, sq) = scaled_operand(g, &g.node(mm).input[0], "query")?;
    let (kt, sk) = scaled_operand(g, &g.node(mm).input[1], "Kᵀ")?;
    let k_present = untranspose_keys(g, &kt)?;
    let scale = match (sq, sk) {
        (Some(a), Some(b)) => Some((a * b) as f32),
        _ => None,
    };
    assemble(
        g,
        "sdpa-decomposed",
        g.node(softmax).name.clone(),
        &q4,
        k_present,
        &v_present,
        &o4,
        &masks,
        scale,
    )
}
