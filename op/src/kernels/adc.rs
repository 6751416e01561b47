//! Asymmetric distance computation: a key's score is the sum of its m table entries.

/// `scores[t] = Σ_j lut[j*k + codes[t*m + j]]` for every token `t` of `codes` (`[T, m]`).
/// Every code must be `< k`; the caller checks that when `k < 256`.
pub fn adc_scores(lut: &[f32], codes: &[u8], k: usize, m: usize, scores: &mut [f32]) {
    debug_assert_eq!(codes.len(), scores.len() * m);
    for (score, token_codes) in scores.iter_mut().zip(codes.chunks_exact(m)) {
        let mut acc = 0.0f32;
        for (j, &c) in token_codes.iter().enumerate() {
            acc += lut[j * k + c as usize];
        }
        *score = acc;
    }
}
