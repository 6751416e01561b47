//! Per-query lookup tables: `lut[j*k + c] = scale * (q_j · C_j[c])`.

/// Builds the `m × k` table of one query and one head. The softmax scale is folded in here,
/// so scoring is a pure sum of lookups.
pub fn build_lut(query: &[f32], codebook: &[f32], k: usize, m: usize, scale: f32, lut: &mut [f32]) {
    let sub = query.len() / m;
    debug_assert_eq!(codebook.len(), m * k * sub);
    debug_assert_eq!(lut.len(), m * k);
    for j in 0..m {
        let q = &query[j * sub..(j + 1) * sub];
        let cents = &codebook[j * k * sub..(j + 1) * k * sub];
        for (entry, centroid) in lut[j * k..(j + 1) * k]
            .iter_mut()
            .zip(cents.chunks_exact(sub))
        {
            let dot: f32 = q.iter().zip(centroid).map(|(a, b)| a * b).sum();
            *entry = scale * dot;
        }
    }
}
