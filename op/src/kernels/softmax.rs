//! Masked softmax over scores and the probability-weighted sum of values.

use super::ValueElem;

/// Turns `scores` into probabilities over the tokens whose `allowed` is true; the others get 0.
/// Returns false (and leaves all-zero probabilities) when no token is allowed.
pub fn masked_softmax_in_place(scores: &mut [f32], allowed: impl Fn(usize) -> bool) -> bool {
    let mut max = f32::NEG_INFINITY;
    let mut any = false;
    for (t, &s) in scores.iter().enumerate() {
        if allowed(t) {
            any = true;
            if s > max {
                max = s;
            }
        }
    }
    if !any {
        scores.fill(0.0);
        return false;
    }
    let mut sum = 0.0f32;
    for (t, s) in scores.iter_mut().enumerate() {
        *s = if allowed(t) { (*s - max).exp() } else { 0.0 };
        sum += *s;
    }
    let inv = 1.0 / sum;
    scores.iter_mut().for_each(|s| *s *= inv);
    true
}

/// `out = Σ_t probs[t] * values[t]`, `values` being `[T, D]`. Zero probabilities are skipped.
pub fn weighted_value_sum<V: ValueElem>(probs: &[f32], values: &[V], out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (&p, row) in probs.iter().zip(values.chunks_exact(d)) {
        if p == 0.0 {
            continue;
        }
        for (o, &v) in out.iter_mut().zip(row) {
            *o += p * v.to_f32();
        }
    }
}
