//! Asymmetric distance computation: a key's score is the sum of its m table entries.

/// `scores[t] = Σ_j lut[j*k + codes[t*m + j]]` for every token `t` of `codes` (`[T, m]`).
/// Every code must be `< k`; the caller checks that when `k < 256`.
pub fn adc_scores(lut: &[f32], codes: &[u8], k: usize, m: usize, scores: &mut [f32]) {
    let tokens = scores.len();
    adc_scores_group(lut, codes, k, m, scores, tokens);
}

/// [`adc_scores`] for a group of queries over the same codes, in one pass: `luts` holds one
/// `m·k` table per query, and query `q`'s scores go to `scores[q·ld..][..T]` (`T` tokens of
/// `codes`). Each query's sums are the single-query ones, bit for bit.
pub fn adc_scores_group(
    luts: &[f32],
    codes: &[u8],
    k: usize,
    m: usize,
    scores: &mut [f32],
    ld: usize,
) {
    let queries = luts.len() / (m * k);
    let tokens = codes.len() / m;
    assert!(
        luts.len() == queries * m * k && codes.len() == tokens * m && tokens <= ld,
        "tables, codes and score rows"
    );
    assert!(
        queries > 0 && scores.len() >= (queries - 1) * ld + tokens,
        "score rows"
    );
    if k == 256 {
        // Fixed-size tables: a u8 code indexes them without a bounds check; constant m and
        // query counts unroll the sums.
        macro_rules! fixed {
            ($($m:literal),*) => {
                match (m, queries) {
                    $(
                        ($m, 1) => return adc_k256::<$m, 1>(luts, codes, scores, ld),
                        ($m, 2) => return adc_k256::<$m, 2>(luts, codes, scores, ld),
                        ($m, 3) => return adc_k256::<$m, 3>(luts, codes, scores, ld),
                        ($m, 4) => return adc_k256::<$m, 4>(luts, codes, scores, ld),
                    )*
                    _ => {}
                }
            };
        }
        fixed!(1, 2, 4, 8, 16);
    }
    for (q, lut) in luts.chunks_exact(m * k).enumerate() {
        let out = &mut scores[q * ld..][..tokens];
        for (score, token_codes) in out.iter_mut().zip(codes.chunks_exact(m)) {
            let mut acc = 0.0f32;
            for (j, &c) in token_codes.iter().enumerate() {
                acc += lut[j * k + c as usize];
            }
            *score = acc;
        }
    }
}

/// Same sums in the same order as the generic loop, so results are bit-identical.
#[inline]
fn adc_k256<const M: usize, const Q: usize>(
    luts: &[f32],
    codes: &[u8],
    scores: &mut [f32],
    ld: usize,
) {
    let tables: [[&[f32; 256]; M]; Q] = std::array::from_fn(|q| {
        std::array::from_fn(|j| {
            luts[(q * M + j) * 256..][..256]
                .try_into()
                .expect("m·256 table")
        })
    });
    for (t, token_codes) in codes.chunks_exact(M).enumerate() {
        let token_codes: &[u8; M] = token_codes.try_into().expect("m codes");
        for (q, tables) in tables.iter().enumerate() {
            let mut acc = 0.0f32;
            for (table, &c) in tables.iter().zip(token_codes) {
                acc += table[c as usize];
            }
            scores[q * ld + t] = acc;
        }
    }
}
