//! A head's codebook laid out for the two dense loops of the op: `[m][d'][K]` (transposed per
//! subspace), so that table building and key encoding run over the K centroids in the innermost
//! loop — contiguous, no horizontal sums, vectorized by the compiler (AVX2 chosen at run time).
//! Sums run over the sub-vector dimension in the same order as `build_lut` / `nearest_centroid`,
//! so the results are bit-for-bit those of the reference versions.

pub struct PreparedCodebook {
    transposed: Vec<f32>,
    subspaces: usize,
    centroids: usize,
    sub_dim: usize,
}

impl PreparedCodebook {
    /// `codebook`: one head's `[m, K, d']` block.
    pub fn new(
        codebook: &[f32],
        subspaces: usize,
        centroids: usize,
        sub_dim: usize,
    ) -> PreparedCodebook {
        let mut transposed = vec![0.0; codebook.len()];
        for j in 0..subspaces {
            for c in 0..centroids {
                for i in 0..sub_dim {
                    transposed[(j * sub_dim + i) * centroids + c] =
                        codebook[(j * centroids + c) * sub_dim + i];
                }
            }
        }
        PreparedCodebook {
            transposed,
            subspaces,
            centroids,
            sub_dim,
        }
    }

    /// Lookup tables of one query: `lut[j*K + c] = scale · (q_j · C_j[c])`.
    pub fn build_lut(&self, query: &[f32], scale: f32, lut: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::x86::available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            unsafe { self.build_lut_avx2(query, scale, lut) };
            return;
        }
        self.build_lut_portable(query, scale, lut)
    }

    /// Codes of one key: nearest centroid per subspace (ties to the lowest index). `dist` is
    /// scratch of K floats.
    pub fn encode(&self, key: &[f32], codes: &mut [u8], dist: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::x86::available() {
            // SAFETY: as above.
            unsafe { self.encode_avx2(key, codes, dist) };
            return;
        }
        self.encode_portable(key, codes, dist)
    }

    #[inline(always)]
    fn build_lut_portable(&self, query: &[f32], scale: f32, lut: &mut [f32]) {
        let (k, sub) = (self.centroids, self.sub_dim);
        for j in 0..self.subspaces {
            let table = &mut lut[j * k..(j + 1) * k];
            table.fill(0.0);
            for i in 0..sub {
                let q = query[j * sub + i];
                let row = &self.transposed[(j * sub + i) * k..(j * sub + i + 1) * k];
                for (t, &c) in table.iter_mut().zip(row) {
                    *t += q * c;
                }
            }
            table.iter_mut().for_each(|t| *t *= scale);
        }
    }

    #[inline(always)]
    fn encode_portable(&self, key: &[f32], codes: &mut [u8], dist: &mut [f32]) {
        let (k, sub) = (self.centroids, self.sub_dim);
        let dist = &mut dist[..k];
        for (j, code) in codes.iter_mut().enumerate().take(self.subspaces) {
            dist.fill(0.0);
            for i in 0..sub {
                let x = key[j * sub + i];
                let row = &self.transposed[(j * sub + i) * k..(j * sub + i + 1) * k];
                for (dd, &c) in dist.iter_mut().zip(row) {
                    let t = x - c;
                    *dd += t * t;
                }
            }
            let mut best = 0;
            let mut best_dist = f32::INFINITY;
            for (c, &dd) in dist.iter().enumerate() {
                if dd < best_dist {
                    best_dist = dd;
                    best = c;
                }
            }
            *code = best as u8;
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn build_lut_avx2(&self, query: &[f32], scale: f32, lut: &mut [f32]) {
        self.build_lut_portable(query, scale, lut)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn encode_avx2(&self, key: &[f32], codes: &mut [u8], dist: &mut [f32]) {
        self.encode_portable(key, codes, dist)
    }
}
