//! A head's codebook laid out for the two dense loops of the op: `[m][d'][K]` (transposed per
//! subspace), so that table building and key encoding run over the K centroids in the innermost
//! loop — contiguous, no horizontal sums, vectorized by the compiler (AVX2+FMA chosen at run
//! time, through the same dispatch as the other SIMD kernels), with the partial sums of a tile of centroids (and of up to four vectors) in registers.
//!
//! Both loops are dot products: tables are `q_j · C_j[c]`, and encoding picks the smallest
//! `‖C_j[c]‖² − 2·x_j · C_j[c]` (the squared distance less `‖x_j‖²`, which is the same for every
//! centroid): one fused multiply-add per element instead of a subtract, a multiply and an add.
//! A code is therefore the nearest centroid up to that rounding: between two centroids whose
//! distances differ by less than [`ENCODE_TIE_BOUND`] allows, either may be chosen
//! (docs/op-spec.md states the bound; `op/tests/reference.rs` checks it).

pub struct PreparedCodebook {
    transposed: Vec<f32>,
    /// `‖C_j[c]‖²`, `[m][K]`.
    norms: Vec<f32>,
    subspaces: usize,
    centroids: usize,
    sub_dim: usize,
}

/// The encoding's tie bound, relative: a code's squared distance exceeds the smallest by at most
/// `ENCODE_TIE_BOUND · (d' + 2) · (‖x‖² + max_c ‖C[c]‖²)` for a sub-vector `x` of `d'` floats.
/// (Each of the `d' + 1` rounded steps of `‖c‖² − 2x·c` errs by at most 2⁻²⁴ of a partial sum
/// bounded by `2(‖x‖² + ‖c‖²)`; two candidates are compared; 2⁻²⁰ leaves a margin of 4.)
pub const ENCODE_TIE_BOUND: f64 = 1.0 / (1u64 << 20) as f64;

/// Whether the portable loops use fused multiply-adds: native on aarch64, a slow libm call on
/// x86_64 without FMA (where the AVX2+FMA instantiation is used whenever the CPU allows).
const PORTABLE_FUSED: bool = cfg!(target_arch = "aarch64");

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
        let norms = codebook
            .chunks_exact(sub_dim.max(1))
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        PreparedCodebook {
            transposed,
            norms,
            subspaces,
            centroids,
            sub_dim,
        }
    }

    pub fn subspaces(&self) -> usize {
        self.subspaces
    }

    pub fn centroids(&self) -> usize {
        self.centroids
    }

    /// The keys `codes` (`T × m`) stand for, transposed: `out[i·stride + t]` is element `i` of key
    /// `t`'s centroids (`out.len() = D·stride`, `stride >= T`), each row of the output a lookup
    /// into one row of the transposed codebook.
    pub fn dequantize_transposed(&self, codes: &[u8], stride: usize, out: &mut [f32]) {
        let (m, k, sub) = (self.subspaces, self.centroids, self.sub_dim);
        let t_n = codes.len() / m.max(1);
        assert!(
            stride >= t_n && out.len() == m * sub * stride,
            "transposed keys"
        );
        for (i, (row, centroids)) in out
            .chunks_exact_mut(stride.max(1))
            .zip(self.transposed.chunks_exact(k))
            .enumerate()
        {
            let j = i / sub;
            for (o, code) in row.iter_mut().zip(codes.chunks_exact(m)) {
                *o = centroids[code[j] as usize];
            }
        }
    }

    /// Lookup tables of one query: `lut[j*K + c] = scale · (q_j · C_j[c])`.
    pub fn build_lut(&self, query: &[f32], scale: f32, lut: &mut [f32]) {
        self.build_luts(1, |_| query, scale, lut)
    }

    /// Codes of one key: nearest centroid per subspace (ties to the lowest index).
    pub fn encode(&self, key: &[f32], codes: &mut [u8]) {
        self.encode_keys(1, |_| key, codes)
    }

    /// Tables of `n` queries (`query(i)` is the i-th) into `luts`, `m·K` floats each.
    pub fn build_luts<'a>(
        &self,
        n: usize,
        query: impl Fn(usize) -> &'a [f32],
        scale: f32,
        luts: &mut [f32],
    ) {
        super::simd::dispatch!(build_luts(self, n, query, scale, luts)
            else self.build_luts_with::<PORTABLE_FUSED>(n, query, scale, luts))
    }

    /// Codes of `n` keys (`key(i)` is the i-th) into `codes`, `m` each.
    pub fn encode_keys<'a>(&self, n: usize, key: impl Fn(usize) -> &'a [f32], codes: &mut [u8]) {
        super::simd::dispatch!(encode_keys(self, n, key, codes)
            else self.encode_keys_with::<PORTABLE_FUSED, NoNearest>(n, key, codes))
    }

    /// [`Self::build_luts`] with or without fused multiply-adds; the SIMD entry points compile it
    /// with their target features.
    #[inline(always)]
    pub(crate) fn build_luts_with<'a, const FUSED: bool>(
        &self,
        n: usize,
        query: impl Fn(usize) -> &'a [f32],
        scale: f32,
        luts: &mut [f32],
    ) {
        let (m, k) = (self.subspaces, self.centroids);
        let mut scratch = Scratch::new(n, m, k, self.sub_dim);
        for start in (0..n).step_by(GATHER_CHUNK) {
            // The scale rides on the query, so the sums are the tables.
            let len = scratch.gather(start, n, &query, scale);
            for (j, first, count) in groups(len, m) {
                let sums = self.group_sums::<FUSED>(j, first, count, false, &mut scratch);
                for (g, table) in sums.chunks_exact(k).enumerate() {
                    luts[((start + first + g) * m + j) * k..][..k].copy_from_slice(table);
                }
            }
        }
    }

    /// [`Self::encode_keys`], as above; `E` finds the nearest centroids in registers where the
    /// architecture has such a kernel (the same codes as the sums and [`argmin`] below).
    #[inline(always)]
    pub(crate) fn encode_keys_with<'a, const FUSED: bool, E: Nearest>(
        &self,
        n: usize,
        key: impl Fn(usize) -> &'a [f32],
        codes: &mut [u8],
    ) {
        let (m, k, sub) = (self.subspaces, self.centroids, self.sub_dim);
        let mut scratch = Scratch::new(n, m, k, sub);
        for start in (0..n).step_by(GATHER_CHUNK) {
            let len = scratch.gather(start, n, &key, -2.0);
            for (j, first, count) in groups(len, m) {
                let rows = &self.transposed[j * sub * k..(j + 1) * sub * k];
                let norms = &self.norms[j * k..(j + 1) * k];
                let part = &scratch.gathered[j * len * sub..(j + 1) * len * sub];
                let scaled = &part[first * sub..(first + count) * sub];
                // SAFETY: E's contract: the entry point that chose it enabled its features.
                let found = unsafe {
                    if count == GROUP {
                        let xs: [&[f32]; GROUP] =
                            std::array::from_fn(|g| &scaled[g * sub..(g + 1) * sub]);
                        E::four(xs, rows, norms, k)
                    } else {
                        E::one(scaled, rows, norms, k).map(|c| [c; GROUP])
                    }
                };
                if let Some(found) = found {
                    for (g, &c) in found[..count].iter().enumerate() {
                        codes[(start + first + g) * m + j] = c as u8;
                    }
                    continue;
                }
                let sums = self.group_sums::<FUSED>(j, first, count, true, &mut scratch);
                for (g, dist) in sums.chunks_exact(k).enumerate() {
                    codes[(start + first + g) * m + j] = argmin(dist) as u8;
                }
            }
        }
    }

    /// The sums `[‖C_j[c]‖² +] Σ_i x'_i·C_j[c]_i` of the gathered sub-vectors `x'` (see
    /// [`Scratch::gather`]) `first..first + count` (`count` is [`GROUP`] or 1) against all K
    /// centroids of subspace `j`, as `[count, K]`.
    #[inline(always)]
    fn group_sums<'s, const FUSED: bool>(
        &self,
        j: usize,
        first: usize,
        count: usize,
        with_norms: bool,
        scratch: &'s mut Scratch,
    ) -> &'s [f32] {
        let (k, sub) = (self.centroids, self.sub_dim);
        let rows = &self.transposed[j * sub * k..(j + 1) * sub * k];
        let init = with_norms.then(|| &self.norms[j * k..(j + 1) * k]);
        let part = &scratch.gathered[j * scratch.len * sub..(j + 1) * scratch.len * sub];
        let scaled = &part[first * sub..(first + count) * sub];
        let sums = &mut scratch.sums[..count * k];
        if count == GROUP {
            let xs: [&[f32]; GROUP] = std::array::from_fn(|g| &scaled[g * sub..(g + 1) * sub]);
            tiled_dots::<GROUP, GROUP_TILE, FUSED>(xs, rows, init, k, sums);
        } else {
            tiled_dots::<1, TILE, FUSED>([scaled], rows, init, k, sums);
        }
        sums
    }
}

/// Vectors gathered per pass of [`Scratch::gather`]: their sub-vectors (64 KiB at D = 64) stay
/// in L2 while every subspace runs over them.
const GATHER_CHUNK: usize = 256;

/// Buffers of [`PreparedCodebook::group_sums`].
struct Scratch {
    /// `[m][len][d']`: the current chunk's vectors, scaled, split by subspace.
    gathered: Vec<f32>,
    /// Vectors in the current chunk.
    len: usize,
    sums: Vec<f32>,
    subspaces: usize,
    sub: usize,
}

impl Scratch {
    fn new(n: usize, subspaces: usize, k: usize, sub: usize) -> Scratch {
        Scratch {
            gathered: vec![0.0; n.min(GATHER_CHUNK) * subspaces * sub],
            len: 0,
            sums: vec![0.0; GROUP * k],
            subspaces,
            sub,
        }
    }

    /// Copies `x_scale ·` vectors `start..` (at most [`GATHER_CHUNK`] of the `n`), split by
    /// subspace, in one pass over whole rows; returns how many. The vectors are rows of a
    /// `[B, S, H·D]` input, a cache line or more apart: reading one subspace of every row per
    /// pass touched each line separately and left the loads' latency exposed.
    #[inline(always)]
    fn gather<'a>(
        &mut self,
        start: usize,
        n: usize,
        vector: &impl Fn(usize) -> &'a [f32],
        x_scale: f32,
    ) -> usize {
        let (m, sub) = (self.subspaces, self.sub);
        let len = GATHER_CHUNK.min(n - start);
        self.len = len;
        for i in 0..len {
            let x = vector(start + i);
            for j in 0..m {
                let dst = &mut self.gathered[(j * len + i) * sub..(j * len + i + 1) * sub];
                for (d, &v) in dst.iter_mut().zip(&x[j * sub..(j + 1) * sub]) {
                    *d = x_scale * v;
                }
            }
        }
        len
    }
}

/// `(subspace, first vector, count)` for every subspace: groups of [`GROUP`] vectors, then the
/// remaining ones alone.
fn groups(n: usize, subspaces: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let grouped = n - n % GROUP;
    (0..subspaces).flat_map(move |j| {
        (0..grouped)
            .step_by(GROUP)
            .map(move |first| (j, first, GROUP))
            .chain((grouped..n).map(move |i| (j, i, 1)))
    })
}

/// Index of the smallest value, ties to the lowest index, NaN never chosen (0 when nothing is
/// smaller than +inf): what a sequential scan keeping the first strictly smaller value returns,
/// in two vectorizable passes.
#[inline(always)]
pub fn argmin(values: &[f32]) -> usize {
    const LANES: usize = 8;
    // The minimum first, in lanes (a vector min per chunk), then the first index holding it.
    let mut lanes = [f32::INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in chunks.by_ref() {
        for (best, &v) in lanes.iter_mut().zip(chunk) {
            *best = if v < *best { v } else { *best };
        }
    }
    let min = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    if min == f32::INFINITY {
        return 0; // nothing below +inf: the reference keeps index 0
    }
    for (n, chunk) in values.chunks_exact(LANES).enumerate() {
        if chunk.iter().fold(false, |hit, &v| hit | (v == min)) {
            return n * LANES + chunk.iter().position(|&v| v == min).unwrap_or(0);
        }
    }
    let tail_start = values.len() - values.len() % LANES;
    tail_start
        + values[tail_start..]
            .iter()
            .position(|&v| v == min)
            .unwrap_or(0)
}

/// Centroids handled per tile for one vector: the partial sums live in registers (8 AVX2 or 16
/// NEON registers) while the sub-vector dimension runs, instead of going to memory each step.
const TILE: usize = 64;
/// A register kernel for [`PreparedCodebook::encode_keys`]: the nearest centroid of pre-scaled
/// (−2x) sub-vectors, equal to [`argmin`] over the distances the portable loops compute, or
/// `None` to let those loops run.
///
/// # Safety
/// Implementations may use their architecture's intrinsics: callers enable those features.
pub(crate) unsafe trait Nearest {
    /// Four sub-vectors ([`GROUP`]).
    ///
    /// # Safety
    /// The implementation's target features are enabled.
    unsafe fn four(
        xs: [&[f32]; GROUP],
        rows: &[f32],
        norms: &[f32],
        k: usize,
    ) -> Option<[usize; GROUP]>;
    /// One sub-vector.
    ///
    /// # Safety
    /// As for [`Nearest::four`].
    unsafe fn one(x: &[f32], rows: &[f32], norms: &[f32], k: usize) -> Option<usize>;
}

/// No register kernel: the portable loops.
pub(crate) struct NoNearest;

// SAFETY: no intrinsics.
unsafe impl Nearest for NoNearest {
    unsafe fn four(_: [&[f32]; GROUP], _: &[f32], _: &[f32], _: usize) -> Option<[usize; GROUP]> {
        None
    }
    unsafe fn one(_: &[f32], _: &[f32], _: &[f32], _: usize) -> Option<usize> {
        None
    }
}

/// Vectors (queries of a prefill chunk, new keys) handled together, so that each loaded row of
/// centroids serves all of them; with [`GROUP_TILE`] centroids per tile, their sums fill 8 AVX2
/// registers.
pub(crate) const GROUP: usize = 4;
const GROUP_TILE: usize = 16;

/// `out[g·K + c] = init[c] + Σ_i xs[g]_i · C[c]_i` (init 0 when `None`) for each vector `g` and
/// every centroid `c` of one subspace (`rows` is its `[d'][K]` transposed block), summed in the
/// order `i = 0, 1, …`, with fused multiply-adds when `FUSED`.
#[inline(always)]
fn tiled_dots<const N: usize, const T: usize, const FUSED: bool>(
    xs: [&[f32]; N],
    rows: &[f32],
    init: Option<&[f32]>,
    k: usize,
    out: &mut [f32],
) {
    let step = |acc: f32, x: f32, c: f32| {
        if FUSED {
            x.mul_add(c, acc)
        } else {
            acc + x * c
        }
    };
    let sub = xs[0].len();
    let mut c0 = 0;
    while c0 + T <= k {
        let start: [f32; T] = match init {
            Some(init) => init[c0..c0 + T].try_into().expect("tile"),
            None => [0.0; T],
        };
        let mut acc = [start; N];
        for i in 0..sub {
            let row: &[f32; T] = rows[i * k + c0..i * k + c0 + T].try_into().expect("tile");
            for (acc, x) in acc.iter_mut().zip(&xs) {
                let xi = x[i];
                for (a, &c) in acc.iter_mut().zip(row) {
                    *a = step(*a, xi, c);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            out[g * k + c0..g * k + c0 + T].copy_from_slice(acc);
        }
        c0 += T;
    }
    if c0 < k {
        for (g, x) in xs.iter().enumerate() {
            let out = &mut out[g * k + c0..(g + 1) * k];
            match init {
                Some(init) => out.copy_from_slice(&init[c0..k]),
                None => out.fill(0.0),
            }
            for (i, &xi) in x.iter().enumerate() {
                for (o, &c) in out.iter_mut().zip(&rows[i * k + c0..(i + 1) * k]) {
                    *o = step(*o, xi, c);
                }
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
