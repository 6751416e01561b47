//! Per-kv-head linear maps applied before product quantization: keys are encoded as `k·A` and
//! tables are built from `q·B` with `B·Aᵀ = I`, so every table score still estimates `q·k`.
//! lookat-calibrate chooses them (e.g. whitening by the queries' covariance followed by a PCA
//! rotation, which makes the quantizer's Euclidean error the expected score error).

/// `A` and `B` of every kv head, row-major `[H_kv, D, D]` each.
#[derive(Debug, Clone)]
pub struct KeyTransforms {
    key: Vec<f32>,
    query: Vec<f32>,
    heads: usize,
    dim: usize,
}

impl KeyTransforms {
    /// `key` / `query`: the `[H_kv, D, D]` tensors. `None` when a length does not fit.
    pub fn new(key: &[f32], query: &[f32], heads: usize, dim: usize) -> Option<KeyTransforms> {
        let len = heads.checked_mul(dim)?.checked_mul(dim)?;
        (key.len() == len && query.len() == len).then(|| KeyTransforms {
            key: key.to_vec(),
            query: query.to_vec(),
            heads,
            dim,
        })
    }

    pub fn fits(&self, heads: usize, dim: usize) -> bool {
        self.heads == heads && self.dim == dim
    }

    /// `out = x·A` for kv head `h`.
    pub fn key(&self, h: usize, x: &[f32], out: &mut [f32]) {
        apply(
            &self.key[h * self.dim * self.dim..][..self.dim * self.dim],
            x,
            out,
        );
    }

    /// `out = x·B` for kv head `h`.
    pub fn query(&self, h: usize, x: &[f32], out: &mut [f32]) {
        apply(
            &self.query[h * self.dim * self.dim..][..self.dim * self.dim],
            x,
            out,
        );
    }

    /// The largest `|(B·Aᵀ − I)[i][j]|` over all heads: how far the pair is from preserving `q·k`.
    pub fn inverse_error(&self) -> f64 {
        let d = self.dim;
        let mut worst = 0f64;
        for h in 0..self.heads {
            let (a, b) = (
                &self.key[h * d * d..][..d * d],
                &self.query[h * d * d..][..d * d],
            );
            for i in 0..d {
                for j in 0..d {
                    let dot: f64 = (0..d)
                        .map(|l| b[i * d + l] as f64 * a[j * d + l] as f64)
                        .sum();
                    worst = worst.max((dot - f64::from(u8::from(i == j))).abs());
                }
            }
        }
        worst
    }
}

/// `out[j] = Σ_i x[i]·m[i·D + j]`, rows of `m` streamed in order (vectorizes over `j`).
fn apply(m: &[f32], x: &[f32], out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (&xi, row) in x.iter().zip(m.chunks_exact(d)) {
        for (o, &w) in out.iter_mut().zip(row) {
            *o += xi * w;
        }
    }
}
