//! The scores → softmax → values path that the two Softmax-anchored patterns share: from the
//! Softmax to `MatMul(probs, V)`, the masks on the scores, Kᵀ back to K, the scale factor.

use crate::block::{KeyPath, Miss};
use lookat_onnx::graph::{attr_int, attr_ints, is_op, GraphIndex};

/// From the Softmax to `MatMul(probs, V)`, through an optional Cast and the SDPA NaN guard
/// `Where(IsNaN(p), 0, p)`. Returns (V tensor, MatMul output).
pub fn probs_times_values(g: &GraphIndex<'_>, softmax: usize) -> Result<(String, String), Miss> {
    let sm = g.node(softmax);
    let axis = attr_int(sm, "axis").unwrap_or(-1);
    if axis != -1 && axis != 3 {
        return Err(format!("Softmax over axis {axis}, not the key axis"));
    }
    let mut p = sm.output[0].clone();
    for _ in 0..4 {
        let consumers = g.consumers(&p);
        if let [one] = consumers {
            let n = g.node(*one);
            if is_op(n, "Cast") {
                p = n.output[0].clone();
                continue;
            }
            if is_op(n, "MatMul") && n.input[0] == p {
                return Ok((n.input[1].clone(), n.output[0].clone()));
            }
            return Err(format!(
                "probabilities feed {} '{}', not MatMul(probs, V)",
                n.op_type, n.name
            ));
        }
        // NaN guard: IsNaN(p) and Where(IsNaN(p), 0, p).
        let isnan = consumers.iter().find(|&&i| is_op(g.node(i), "IsNaN"));
        let guard = consumers
            .iter()
            .find(|&&i| is_op(g.node(i), "Where") && g.node(i).input[2] == p);
        match (isnan, guard, consumers.len()) {
            (Some(_), Some(&w), 2) => p = g.node(w).output[0].clone(),
            _ => {
                return Err(format!(
                    "probabilities have {} consumers, not a MatMul with V",
                    consumers.len()
                ))
            }
        }
    }
    Err("no MatMul(probs, V) within 4 nodes of the Softmax".into())
}

/// Peels the mask off the scores: `Add(scores, bias)` and `Where(cond, scores, min)`, in any
/// order. Returns (scores tensor, mask tensors seen).
pub fn peel_masks<'g>(g: &GraphIndex<'g>, mut x: String) -> (String, Vec<String>) {
    let mut masks = vec![];
    for _ in 0..4 {
        let Some(i) = g.producer(&x) else { break };
        let n = g.node(i);
        if is_op(n, "Add") && n.input.len() == 2 {
            let (a, b) = (&n.input[0], &n.input[1]);
            // The scores side leads back to the QK MatMul within a few nodes; the bias does not.
            let (scores, bias) = if leads_to_matmul(g, a) {
                (a, b)
            } else {
                (b, a)
            };
            masks.push(bias.clone());
            x = scores.clone();
        } else if is_op(n, "Where") && n.input.len() == 3 && g.scalar(&n.input[2]).is_some() {
            masks.push(n.input[0].clone());
            x = n.input[1].clone();
        } else if is_op(n, "Cast") {
            x = n.input[0].clone();
        } else {
            break;
        }
    }
    (x, masks)
}

fn leads_to_matmul(g: &GraphIndex<'_>, t: &str) -> bool {
    let mut x = t.to_string();
    for _ in 0..4 {
        let Some(i) = g.producer(&x) else {
            return false;
        };
        let n = g.node(i);
        if is_op(n, "MatMul") {
            return true;
        }
        if !["Mul", "Div", "Where", "Cast", "Add"]
            .iter()
            .any(|op| is_op(n, op))
        {
            return false;
        }
        x = if is_op(n, "Where") {
            n.input[1].clone()
        } else {
            n.input[0].clone()
        };
    }
    false
}

/// Kᵀ back to K: `Transpose(K, perm 0,1,3,2)`, or dynamo's
/// `Reshape(Transpose(Reshape(K, [-1, T, D]), perm 0,2,1), [B, H, D, T])`.
pub fn untranspose_keys(g: &GraphIndex<'_>, kt: &str) -> Result<KeyPath, Miss> {
    if let Some(t) = g.producer_op(kt, "Transpose") {
        let n = g.node(t);
        match attr_ints(n, "perm").as_deref() {
            Some([0, 1, 3, 2]) => return Ok(KeyPath::Bnsh(n.input[0].clone())),
            Some([0, 2, 3, 1]) => return Ok(KeyPath::Bsnh(n.input[0].clone())),
            p => {
                return Err(format!(
                    "keys transposed with perm {p:?}, expected [0,1,3,2] or [0,2,3,1]"
                ))
            }
        }
    }
    let outer = g.producer_op(kt, "Reshape").ok_or_else(|| {
        format!(
            "Kᵀ comes from {}, not a Transpose of the keys",
            crate::block::describe(g, kt)
        )
    })?;
    let t = g
        .producer_op(&g.node(outer).input[0], "Transpose")
        .filter(|&t| attr_ints(g.node(t), "perm").as_deref() == Some(&[0, 2, 1]))
        .ok_or("Kᵀ Reshape is not fed by Transpose(perm 0,2,1)")?;
    let inner = g
        .producer_op(&g.node(t).input[0], "Reshape")
        .ok_or("Kᵀ Transpose is not fed by a Reshape of the keys")?;
    Ok(KeyPath::Bnsh(g.node(inner).input[0].clone()))
}

/// A scalar factor: a constant, or `Sqrt`/`Pow`/`Div` of a run-time shape (optimum computes
/// 1/sqrt(D) from the value's shape). `Ok(None)` means "computed at run time".
pub fn scale_factor(g: &GraphIndex<'_>, t: &str) -> Result<Option<f64>, Miss> {
    if let Some(c) = g.scalar(t) {
        return Ok(Some(c));
    }
    let runtime = g
        .ancestors(t, 64)
        .into_iter()
        .any(|i| is_op(g.node(i), "Shape"))
        && g.ancestors(t, 64)
            .into_iter()
            .any(|i| ["Sqrt", "Pow"].iter().any(|op| is_op(g.node(i), op)));
    if runtime {
        Ok(None)
    } else {
        Err(format!(
            "scale factor {} is neither a constant nor a shape-derived square root",
            crate::block::describe(g, t)
        ))
    }
}
