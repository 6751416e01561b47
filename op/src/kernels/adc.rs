//! Asymmetric distance computation: a key's score is the sum of its m table entries.

/// `scores[t] = Σ_j lut[j*k + codes[t*m + j]]` for every token `t` of `codes` (`[T, m]`).
/// Every code must be `< k`; the caller checks that when `k < 256`.
pub fn adc_scores(lut: &[f32], codes: &[u8], k: usize, m: usize, scores: &mut [f32]) {
    debug_assert_eq!(codes.len(), scores.len() * m);
    if k == 256 {
        // Fixed-size tables: a u8 code indexes them without a bounds check, and a constant m
        // unrolls the sum.
        match m {
            1 => return adc_k256::<1>(lut, codes, scores),
            2 => return adc_k256::<2>(lut, codes, scores),
            4 => return adc_k256::<4>(lut, codes, scores),
            8 => return adc_k256::<8>(lut, codes, scores),
            16 => return adc_k256::<16>(lut, codes, scores),
            _ => {}
        }
    }
    for (score, token_codes) in scores.iter_mut().zip(codes.chunks_exact(m)) {
        let mut acc = 0.0f32;
        for (j, &c) in token_codes.iter().enumerate() {
            acc += lut[j * k + c as usize];
        }
        *score = acc;
    }
}

/// Same sums in the same order as the generic loop, so results are bit-identical.
#[inline]
fn adc_k256<const M: usize>(lut: &[f32], codes: &[u8], scores: &mut [f32]) {
    let tables: [&[f32; 256]; M] =
        std::array::from_fn(|j| lut[j * 256..(j + 1) * 256].try_into().expect("m·256 table"));
    for (score, token_codes) in scores.iter_mut().zip(codes.chunks_exact(M)) {
        let mut acc = 0.0f32;
        for (table, &c) in tables.iter().zip(token_codes) {
            acc += table[c as usize];
        }
        *score = acc;
    }
}
