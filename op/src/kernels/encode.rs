//! Key encoding: the nearest centroid of each subspace, by squared Euclidean distance.

/// Index of the centroid nearest to `x` among `centroids` (`k` rows of `x.len()` floats).
/// Ties go to the lowest index; a NaN input gives 0.
#[inline]
pub fn nearest_centroid(x: &[f32], centroids: &[f32], k: usize) -> u8 {
    let d = x.len();
    debug_assert_eq!(centroids.len(), k * d);
    let mut best = 0usize;
    let mut best_dist = f32::INFINITY;
    for (c, centroid) in centroids.chunks_exact(d).enumerate() {
        let dist: f32 = x
            .iter()
            .zip(centroid)
            .map(|(a, b)| {
                let t = a - b;
                t * t
            })
            .sum();
        if dist < best_dist {
            best_dist = dist;
            best = c;
        }
    }
    best as u8
}

/// Encodes one key of one head: `codes[j]` is the nearest centroid of subspace `j`.
/// `codebook` is that head's `[m, k, d/m]` block.
pub fn encode_key(key: &[f32], codebook: &[f32], k: usize, codes: &mut [u8]) {
    let m = codes.len();
    let sub = key.len() / m;
    for (j, code) in codes.iter_mut().enumerate() {
        let x = &key[j * sub..(j + 1) * sub];
        let cents = &codebook[j * k * sub..(j + 1) * k * sub];
        *code = nearest_centroid(x, cents, k);
    }
}
