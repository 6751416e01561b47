//! Masked softmax fused with the probability-weighted sum of values.

use super::ValueElem;

/// Softmax-weighted value sum in one pass over token blocks (no stored probabilities): a running
/// maximum, a running denominator and an accumulator rescaled whenever the maximum grows.
pub struct OnlineSoftmax {
    max: f32,
    sum: f32,
    acc: Vec<f32>,
}

impl OnlineSoftmax {
    pub fn new(d: usize) -> OnlineSoftmax {
        OnlineSoftmax {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            acc: vec![0.0; d],
        }
    }

    /// Adds tokens with `scores` and value rows `values` (`scores.len() × D`); tokens whose
    /// `allowed` is false are skipped.
    pub fn update<V: ValueElem>(
        &mut self,
        scores: &[f32],
        allowed: impl Fn(usize) -> bool,
        values: &[V],
    ) {
        let d = self.acc.len();
        let mut block_max = f32::NEG_INFINITY;
        for (t, &s) in scores.iter().enumerate() {
            if allowed(t) && s > block_max {
                block_max = s;
            }
        }
        if block_max == f32::NEG_INFINITY {
            return;
        }
        if block_max > self.max {
            let c = (self.max - block_max).exp(); // 0 on the first block
            self.sum *= c;
            super::simd::scale(&mut self.acc, c);
            self.max = block_max;
        }
        for (t, (&s, row)) in scores.iter().zip(values.chunks_exact(d)).enumerate() {
            if allowed(t) {
                let p = (s - self.max).exp();
                self.sum += p;
                V::accumulate(&mut self.acc, p, row);
            }
        }
    }

    /// Writes the normalised result; zeros when no token was allowed.
    pub fn finish(&self, out: &mut [f32]) {
        if self.sum > 0.0 {
            let inv = 1.0 / self.sum;
            for (o, &a) in out.iter_mut().zip(&self.acc) {
                *o = a * inv;
            }
        } else {
            out.fill(0.0);
        }
    }
}
