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
            let x = &query[j * sub..(j + 1) * sub];
            let rows = &self.transposed[j * sub * k..(j + 1) * sub * k];
            let table = &mut lut[j * k..(j + 1) * k];
            tiled_sums(x, rows, k, |acc, xi, c| acc + xi * c, table);
            table.iter_mut().for_each(|t| *t *= scale);
        }
    }

    #[inline(always)]
    fn encode_portable(&self, key: &[f32], codes: &mut [u8], dist: &mut [f32]) {
        let (k, sub) = (self.centroids, self.sub_dim);
        let dist = &mut dist[..k];
        for (j, code) in codes.iter_mut().enumerate().take(self.subspaces) {
            let x = &key[j * sub..(j + 1) * sub];
            let rows = &self.transposed[j * sub * k..(j + 1) * sub * k];
            tiled_sums(
                x,
                rows,
                k,
                |acc, xi, c| {
                    let t = xi - c;
                    acc + t * t
                },
                dist,
            );
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

/// Centroids handled per tile: the tile's partial sums live in registers (8 AVX2 or 16 NEON
/// registers) while the sub-vector dimension runs, instead of going to memory each step.
const TILE: usize = 64;

/// `out[c] = step(…step(step(0, x_0, C[c]_0), x_1, C[c]_1)…)` for every centroid `c` of one
/// subspace (`rows` is its `[d'][K]` transposed block): dot products or squared distances,
/// summed in the order `i = 0, 1, …` of the reference functions, so results are bit-identical.
#[inline(always)]
fn tiled_sums(
    x: &[f32],
    rows: &[f32],
    k: usize,
    step: impl Fn(f32, f32, f32) -> f32,
    out: &mut [f32],
) {
    let mut c0 = 0;
    while c0 + TILE <= k {
        let mut acc = [0.0f32; TILE];
        for (i, &xi) in x.iter().enumerate() {
            let row = &rows[i * k + c0..i * k + c0 + TILE];
            for (a, &c) in acc.iter_mut().zip(row) {
                *a = step(*a, xi, c);
            }
        }
        out[c0..c0 + TILE].copy_from_slice(&acc);
        c0 += TILE;
    }
    if c0 < k {
        let out = &mut out[c0..k];
        out.fill(0.0);
        for (i, &xi) in x.iter().enumerate() {
            for (o, &c) in out.iter_mut().zip(&rows[i * k + c0..(i + 1) * k]) {
                *o = step(*o, xi, c);
            }
        }
    }
}

/// Every head's [`PreparedCodebook`]. The op builds it once at session creation when the
/// codebooks are an initializer, otherwise once per call.
pub struct PreparedCodebooks {
    heads: Vec<PreparedCodebook>,
}

impl PreparedCodebooks {
    /// `codebooks`: the `[H, m, K, d']` input.
    pub fn new(
        codebooks: &[f32],
        heads: usize,
        subspaces: usize,
        centroids: usize,
        sub_dim: usize,
    ) -> PreparedCodebooks {
        let per_head = subspaces * centroids * sub_dim;
        assert_eq!(codebooks.len(), heads * per_head, "codebooks shape");
        PreparedCodebooks {
            heads: codebooks
                .chunks_exact(per_head.max(1))
                .take(heads)
                .map(|book| PreparedCodebook::new(book, subspaces, centroids, sub_dim))
                .collect(),
        }
    }

    pub fn head(&self, h: usize) -> &PreparedCodebook {
        &self.heads[h]
    }

    /// Whether these were prepared for this shape.
    pub fn fits(&self, heads: usize, subspaces: usize, centroids: usize, sub_dim: usize) -> bool {
        self.heads.len() == heads
            && self
                .heads
                .iter()
                .all(|b| (b.subspaces, b.centroids, b.sub_dim) == (subspaces, centroids, sub_dim))
    }
}

impl std::fmt::Debug for PreparedCodebooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.heads.first();
        f.debug_struct("PreparedCodebooks")
            .field("heads", &self.heads.len())
            .field("subspaces", &first.map(|b| b.subspaces))
            .field("centroids", &first.map(|b| b.centroids))
            .field("sub_dim", &first.map(|b| b.sub_dim))
            .finish()
    }
}
