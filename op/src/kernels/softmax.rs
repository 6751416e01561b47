//! Masked softmax fused with the probability-weighted sum of values.

use super::simd::GROUP_MAX;
use super::ValueElem;

/// Softmax-weighted value sum in one pass over token blocks (no stored probabilities): a running
/// maximum, a running denominator and an accumulator rescaled whenever the maximum grows. States
/// over disjoint token ranges merge exactly ([`OnlineSoftmax::merge`]), which is what lets one
/// query's cache be split over threads.
#[derive(Clone)]
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

    /// Turns one block's scores (masked tokens `-inf`) into weights relative to the running
    /// maximum, in place, rescaling what was accumulated when the maximum grows. Returns false,
    /// with all weights 0, when every score is `-inf`.
    pub fn absorb_scores(&mut self, scores: &mut [f32]) -> bool {
        let block_max = super::simd::max(scores);
        if block_max == f32::NEG_INFINITY {
            scores.fill(0.0);
            return false;
        }
        if block_max > self.max {
            self.rescale(block_max);
        }
        self.sum += super::simd::exp_shifted(scores, self.max);
        true
    }

    /// Adds `Σ_t weights[q][t] · rows[t]` to each state `q` of a group of at most
    /// [`GROUP_MAX`] (weights from [`Self::absorb_scores`]), reading each row once for the whole
    /// group; with `copy_to`, copies the rows there in the same pass.
    pub fn accumulate_group<V: ValueElem>(
        states: &mut [OnlineSoftmax],
        weights: &[&[f32]],
        rows: &[V],
        copy_to: Option<&mut [V]>,
        stream: bool,
    ) {
        let n = states.len();
        let mut each = states.iter_mut();
        let mut acc: [&mut [f32]; GROUP_MAX] =
            std::array::from_fn(|_| each.next().map_or(&mut [][..], |s| &mut s.acc[..]));
        V::accumulate_rows(&mut acc[..n], weights, rows, copy_to, stream);
    }

    /// Folds in a state over other tokens of the same query.
    pub fn merge(&mut self, other: &OnlineSoftmax) {
        if other.max == f32::NEG_INFINITY {
            return;
        }
        if other.max > self.max {
            self.rescale(other.max);
        }
        let c = (other.max - self.max).exp();
        self.sum += c * other.sum;
        for (a, &o) in self.acc.iter_mut().zip(&other.acc) {
            *a += c * o;
        }
    }

    fn rescale(&mut self, new_max: f32) {
        let c = (self.max - new_max).exp(); // 0 while nothing was absorbed
        self.sum *= c;
        super::simd::scale(&mut self.acc, c);
        self.max = new_max;
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
