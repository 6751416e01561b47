//! The block kernels written once, over [`Lanes`]: a few vector operations that each architecture
//! implements with its own registers (`x86::Avx2`, `arm::Neon`). Every function here is
//! `#[inline(always)]` and is only reached through an architecture's entry points, which are
//! compiled with that architecture's target features (see `entry_points!` in `simd/mod.rs`).
//!
//! Each algorithm applies the same operations in the same order on every architecture, so a
//! result differs between them only where an instruction itself does (e.g. how `max` treats NaN,
//! which each implementation documents).

use std::marker::PhantomData;

use super::scalar;
use crate::kernels::codebook::{Nearest, GROUP};

/// One vector of `N` float32 lanes and the operations the kernels use.
///
/// # Safety
/// Implementations use intrinsics of their target features: every method may only be called
/// from code compiled with those features on a CPU that has them.
pub unsafe trait Lanes {
    const N: usize;
    /// Accumulator registers of one value-accumulation strip, over all the queries it serves
    /// (a strip for `Q` queries is at most `MAX_STRIP / Q` vectors wide).
    const MAX_STRIP: usize;
    /// Whether the encoder's register tile takes keys two at a time (16 registers: 8
    /// accumulators and each key's best distances and indices) rather than four.
    const ENCODE_PAIRS: bool;
    type F: Copy;

    unsafe fn splat(x: f32) -> Self::F;
    /// `N` floats from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a·b + c`, fused.
    unsafe fn mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c − a·b`, fused.
    unsafe fn neg_mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    /// The larger lane; where `a` is NaN the result is `b` (NaN ignored in `a`).
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    /// Round to the nearest integer, ties to even.
    unsafe fn round(a: Self::F) -> Self::F;
    /// `2^n` for lanes holding integers in the normal exponent range.
    unsafe fn pow2i(n: Self::F) -> Self::F;
    /// `x` where `a < b` (an ordered comparison: false when either is NaN), else `y`.
    unsafe fn select_lt(a: Self::F, b: Self::F, x: Self::F, y: Self::F) -> Self::F;
    /// `v` where `x >= bound`, 0 where `x < bound`.
    unsafe fn zero_below(v: Self::F, x: Self::F, bound: f32) -> Self::F;
    unsafe fn reduce_sum(v: Self::F) -> f32;
    /// The largest lane, NaN ignored.
    unsafe fn reduce_max(v: Self::F) -> f32;
    /// Orders streaming stores before later stores (where the architecture has such stores).
    unsafe fn store_fence() {}
    /// `out[t] = weights[t] · scale_t`, where `scale_t` is the little-endian float32 at byte
    /// `at` of row `t` (`rows`: rows of `stride` bytes); 0 where the weight is 0, whatever the
    /// scale. One row at a time here; an architecture with gathers loads a register of scales.
    ///
    /// # Safety
    /// `rows` holds `out.len()` rows with `at + 4 <= stride`, `weights` as many floats.
    #[inline(always)]
    unsafe fn scale_weights(
        out: &mut [f32],
        weights: &[f32],
        rows: &[i8],
        stride: usize,
        at: usize,
    ) {
        scalar::scale_weights(out, weights, rows, stride, at);
    }
}

/// How value rows of one element type are read into lanes and copied, raw, to another buffer.
///
/// # Safety
/// As for [`Lanes`]: only called from code compiled with `L`'s target features.
pub unsafe trait Row<L: Lanes>: Copy {
    /// The loaded elements as they were in memory (copied without conversion).
    type Raw: Copy;
    /// `L::N` elements from `p`: as float32 lanes, and raw.
    unsafe fn load(p: *const Self) -> (L::F, Self::Raw);
    /// Stores `raw` at `p`; `stream` asks for a store that bypasses the cache (`p` aligned to
    /// `L::N` elements then).
    unsafe fn store(p: *mut Self, raw: Self::Raw, stream: bool);
    fn to_f32(self) -> f32;
}

/// `exp` of each lane (Cephes-style range reduction, degree-5 polynomial, about 2 ulp); lanes
/// below -87 (where f32 `exp` leaves the normal range), `-inf` included, give 0.
///
/// # Safety
/// Called from code compiled with `L`'s features.
#[inline(always)]
pub unsafe fn exp<L: Lanes>(x: L::F) -> L::F {
    // SAFETY: the caller runs with L's target features.
    unsafe {
        let clamped = L::min(L::max(x, L::splat(-87.0)), L::splat(88.0));
        let n = L::round(L::mul(clamped, L::splat(std::f32::consts::LOG2_E)));
        // x - n·ln2 in two steps, so that r keeps its low bits.
        let r = L::neg_mul_add(n, L::splat(0.693_359_4), clamped);
        let r = L::neg_mul_add(n, L::splat(-2.121_944_4e-4), r);
        let mut y = L::splat(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            y = L::mul_add(y, r, L::splat(c));
        }
        let y = L::mul_add(y, L::mul(r, r), L::add(r, L::splat(1.0)));
        L::zero_below(L::mul(y, L::pow2i(n)), x, -87.0)
    }
}

/// `x[i] = exp(x[i] - shift)`, returning the sum (see [`super::exp_shifted`]).
///
/// # Safety
/// Called from code compiled with `L`'s features.
#[inline(always)]
pub unsafe fn exp_shifted<L: Lanes>(x: &mut [f32], shift: f32) -> f32 {
    let n = x.len();
    let mut i = 0;
    // SAFETY: the caller runs with L's features; every access is at i + N <= n, in the slice.
    unsafe {
        let s = L::splat(shift);
        let mut sum = L::splat(0.0);
        while i + L::N <= n {
            let p = x.as_mut_ptr().add(i);
            let e = exp::<L>(L::sub(L::load(p), s));
            L::store(p, e);
            sum = L::add(sum, e);
            i += L::N;
        }
        L::reduce_sum(sum) + scalar::exp_shifted(&mut x[i..], shift)
    }
}

/// The largest value, NaN ignored; `-inf` for none.
///
/// # Safety
/// Called from code compiled with `L`'s features.
#[inline(always)]
pub unsafe fn max<L: Lanes>(x: &[f32]) -> f32 {
    let n = x.len();
    let mut i = 0;
    // SAFETY: the caller runs with L's features; loads at i + N <= n.
    unsafe {
        let mut m = L::splat(f32::NEG_INFINITY);
        while i + L::N <= n {
            m = L::max(L::load(x.as_ptr().add(i)), m);
            i += L::N;
        }
        L::reduce_max(m).max(scalar::max(&x[i..]))
    }
}

/// How far ahead of the row being accumulated the value scan asks for cache lines: with the
/// hardware prefetcher alone a decode step over a cache in DRAM was slower (same-process A/B on
/// docs/BENCHMARKS.md's machine; 2, 4 and 8 KiB tried, 8 best).
const PREFETCH_AHEAD: usize = 8192;

/// One column strip of `W` vectors over all rows for `Q` queries at once, the accumulators in
/// `Q·W` registers: each piece of a row is loaded (and widened) once and added to every query's
/// sum. With `SKIP_ZERO`, rows of weight exactly 0 are skipped (a masked float row may hold
/// NaN); without, every row is added, each weight broadcast straight from memory.
///
/// # Safety
/// Each `acc[q]` holds `W·N` floats and each `probs[q]` `tokens` floats; `rows` (and `copy`,
/// when not null) hold `tokens` rows of `stride` elements with at least `W·N` from the strip
/// start (and 4 bytes at `scale_at`); `L`'s features are enabled.
// Indices: `v` walks the row's pieces and every query's accumulators in step.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
unsafe fn strip<L: Lanes, V: Row<L>, const W: usize, const Q: usize, const SKIP_ZERO: bool>(
    acc: [*mut f32; Q],
    probs: [*const f32; Q],
    tokens: usize,
    rows: *const V,
    copy: *mut V,
    stride: usize,
    stream: bool,
) {
    // SAFETY: all pointer arithmetic stays inside the ranges the caller guarantees.
    unsafe {
        let mut a: [[L::F; W]; Q] =
            std::array::from_fn(|q| std::array::from_fn(|v| L::load(acc[q].add(L::N * v))));
        // About one prefetch per cache line of the stream: 1 per int8 row (68 bytes: the line
        // holding the next row's start covers the overhang), 2 per float16 row, 4 per float32
        // row (a line is asked for when more than half of it belongs to the row).
        let lines_end = (stride * std::mem::size_of::<V>()).saturating_sub(32);
        // Each register-wide piece is loaded, copied and added before the next is loaded: the
        // accumulators plus a couple of temporaries fit the register file (holding a whole row
        // too would spill an accumulator to the stack on every row).
        for t in 0..tokens {
            let row = rows.add(t * stride);
            let ahead = row.cast::<u8>().wrapping_add(PREFETCH_AHEAD);
            super::prefetch_line(ahead);
            let mut line = 64;
            while line < lines_end {
                super::prefetch_line(ahead.wrapping_add(line));
                line += 64;
            }
            let p: [f32; Q] = std::array::from_fn(|q| *probs[q].add(t));
            let pv: [L::F; Q] = std::array::from_fn(|q| L::splat(p[q]));
            // A weight of exactly 0 adds nothing, whatever the row holds (a masked row may be
            // NaN); callers whose rows are always finite skip the test.
            let all = !SKIP_ZERO || p.iter().all(|&p| p != 0.0);
            let any = all || p.iter().any(|&p| p != 0.0);
            if copy.is_null() && !any {
                continue;
            }
            let dst = if copy.is_null() {
                copy
            } else {
                copy.add(t * stride)
            };
            for v in 0..W {
                let (x, raw) = V::load(row.add(L::N * v));
                if !dst.is_null() {
                    V::store(dst.add(L::N * v), raw, stream);
                }
                for q in 0..Q {
                    if all || p[q] != 0.0 {
                        a[q][v] = L::mul_add(pv[q], x, a[q][v]);
                    }
                }
            }
        }
        for (q, aq) in a.iter().enumerate() {
            for (v, &av) in aq.iter().enumerate() {
                L::store(acc[q].add(L::N * v), av);
            }
        }
    }
}

/// The register strips of a value accumulation for `Q` queries: columns `0..c` of every
/// `acc[q]` (the returned `c`, a multiple of `L::N`) get `Σ_t probs[q][t] · rows[t·stride + col]`,
/// and `copy` (when not null) those columns of every row; `S`: [`strip`]'s `SKIP_ZERO`.
///
/// # Safety
/// Each `acc[q]` holds `d` floats and each `probs[q]` `tokens`; `rows` (and `copy`) hold `tokens`
/// rows of `stride >= d` elements; `L`'s features are enabled.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn strips<L: Lanes, V: Row<L>, const Q: usize, const S: bool>(
    acc: [*mut f32; Q],
    d: usize,
    probs: [*const f32; Q],
    tokens: usize,
    rows: *const V,
    copy: *mut V,
    stride: usize,
    stream: bool,
) -> usize {
    let mut c = 0;
    while c + L::N <= d {
        let vectors = ((d - c) / L::N).min(L::MAX_STRIP / Q).max(1);
        // Strips of 16, 8, 4, 2 or 1 vectors: the widths compiled below.
        let w = [16, 8, 4, 2, 1]
            .into_iter()
            .find(|&w| w <= vectors)
            .unwrap_or(1);
        let acc = acc.map(|a| a.wrapping_add(c));
        let (rows, copy) = (
            rows.wrapping_add(c),
            if copy.is_null() {
                copy
            } else {
                copy.wrapping_add(c)
            },
        );
        // SAFETY: the strip covers columns c..c + w·N <= d of every row; L's features are on.
        unsafe {
            match w {
                16 => strip::<L, V, 16, Q, S>(acc, probs, tokens, rows, copy, stride, stream),
                8 => strip::<L, V, 8, Q, S>(acc, probs, tokens, rows, copy, stride, stream),
                4 => strip::<L, V, 4, Q, S>(acc, probs, tokens, rows, copy, stride, stream),
                2 => strip::<L, V, 2, Q, S>(acc, probs, tokens, rows, copy, stride, stream),
                _ => strip::<L, V, 1, Q, S>(acc, probs, tokens, rows, copy, stride, stream),
            }
        }
        c += w * L::N;
    }
    c
}

/// The accumulators' pointers, each derived from its own `&mut` slice.
fn acc_ptrs<const Q: usize>(acc: &mut [&mut [f32]]) -> [*mut f32; Q] {
    let mut each = acc.iter_mut();
    std::array::from_fn(|_| each.next().map_or(std::ptr::null_mut(), |a| a.as_mut_ptr()))
}

fn prob_ptrs<const Q: usize>(probs: &[&[f32]]) -> [*const f32; Q] {
    std::array::from_fn(|q| probs[q].as_ptr())
}

/// [`strips`] for the number of queries `acc.len()` (1 to [`super::GROUP_MAX`]).
///
/// # Safety
/// As for [`strips`], with `acc` and `probs` of the same length (checked by
/// [`super::group_shape`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn group_strips<L: Lanes, V: Row<L>, const S: bool>(
    acc: &mut [&mut [f32]],
    d: usize,
    probs: &[&[f32]],
    rows: *const V,
    copy: *mut V,
    stride: usize,
    stream: bool,
) -> usize {
    let tokens = probs[0].len();
    macro_rules! with_queries {
        ($q:literal) => {
            strips::<L, V, $q, S>(
                acc_ptrs(acc),
                d,
                prob_ptrs(probs),
                tokens,
                rows,
                copy,
                stride,
                stream,
            )
        };
    }
    // SAFETY: forwarded from the caller; the pointers come from slices of the promised lengths.
    unsafe {
        match acc.len() {
            1 => with_queries!(1),
            2 => with_queries!(2),
            3 => with_queries!(3),
            _ => with_queries!(4),
        }
    }
}

/// Rows per pass of [`accumulate_int8`]: their weights times their scales fit on the stack, and
/// the rows themselves stay in L1 between the scaling pass and the accumulation.
const INT8_CHUNK: usize = 128;

/// `acc[q][c] += Σ_t weights[q][t] · scale_t · rows[t·(D + 4) + c]` over int8 rows (D values,
/// then the row's float32 scale) for a group of queries, rows of weight 0 adding nothing.
///
/// Chunk by chunk, each weight is first multiplied by its row's scale ([`Lanes::scale_weights`];
/// 0 stays 0, even when the scale is NaN), then the chunk's rows are added with those products:
/// every row adds, so the hot loop broadcasts each weight straight from memory with no test per
/// row. The products are those of [`scalar::accumulate_int8`].
///
/// # Safety
/// Called from code compiled with `L`'s features.
#[inline(always)]
pub unsafe fn accumulate_int8<L: Lanes>(acc: &mut [&mut [f32]], weights: &[&[f32]], rows: &[i8])
where
    i8: Row<L>,
{
    let d = super::group_shape(acc, weights, rows.len(), 4);
    let stride = d + 4;
    let tokens = weights[0].len();
    let mut scaled = [[0.0f32; INT8_CHUNK]; super::GROUP_MAX];
    let mut c = 0;
    for start in (0..tokens).step_by(INT8_CHUNK) {
        let n = (tokens - start).min(INT8_CHUNK);
        let chunk = &rows[start * stride..(start + n) * stride];
        for (out, w) in scaled.iter_mut().zip(weights) {
            // SAFETY: L's features are on; the chunk holds n rows of `stride` bytes.
            unsafe { L::scale_weights(&mut out[..n], &w[start..start + n], chunk, stride, d) };
        }
        let chunk_weights: [&[f32]; super::GROUP_MAX] = std::array::from_fn(|q| &scaled[q][..n]);
        // SAFETY: L's features are on; the chunk holds n rows of D values and a scale, each with
        // a finite weight for every query of the group.
        c = unsafe {
            group_strips::<L, i8, false>(
                acc,
                d,
                &chunk_weights[..weights.len()],
                chunk.as_ptr(),
                std::ptr::null_mut(),
                stride,
                false,
            )
        };
    }
    for (a, w) in acc.iter_mut().zip(weights) {
        scalar::accumulate_int8(a, w, rows, c);
    }
}

/// `acc[q][c] += Σ_t probs[q][t] · rows[t·D + c]` for a group of queries, copying the rows to
/// `copy_to` in the same pass (see [`super::accumulate_rows_f32`]).
///
/// # Safety
/// Called from code compiled with `L`'s features.
#[inline(always)]
pub unsafe fn accumulate_rows<L: Lanes, V: Row<L>>(
    acc: &mut [&mut [f32]],
    probs: &[&[f32]],
    rows: &[V],
    mut copy_to: Option<&mut [V]>,
    stream: bool,
) {
    let d = super::group_shape(acc, probs, rows.len(), 0);
    if let Some(dst) = &copy_to {
        assert_eq!(dst.len(), rows.len(), "copy destination");
    }
    let copy = copy_to
        .as_deref_mut()
        .map_or(std::ptr::null_mut(), <[V]>::as_mut_ptr);
    // Streaming stores need every row start aligned to the store width.
    let width = L::N * std::mem::size_of::<V>();
    let stream = stream
        && !copy.is_null()
        && (copy as usize).is_multiple_of(width)
        && (d * std::mem::size_of::<V>()).is_multiple_of(width);
    // SAFETY: L's features are on; rows (and copy) hold probs[q].len() rows of d elements.
    let c = unsafe { group_strips::<L, V, true>(acc, d, probs, rows.as_ptr(), copy, d, stream) };
    if stream {
        // SAFETY: L's features are on. Streaming stores are weakly ordered: fence them before
        // the pool reports completion.
        unsafe { L::store_fence() };
    }
    for (q, (a, p)) in acc.iter_mut().zip(probs).enumerate() {
        let copy_to = if q == 0 { copy_to.as_deref_mut() } else { None };
        scalar::accumulate_columns(a, p, rows, copy_to, c, V::to_f32);
    }
}

/// The nearest centroid of each of `N` sub-vectors among one subspace's K centroids (`rows` its
/// `[d'][K]` transposed block, `norms` its `‖c‖²`), the sub-vectors already scaled by −2: the
/// distances `‖c‖² + Σ_i x'_i·c_i` are summed exactly as the portable loops sum them (fused
/// multiply-adds, `i` ascending) and reduced in registers, tile by tile, to each lane's first
/// smallest (an ordered `<`: NaN never wins), then to the first smallest overall — what
/// [`crate::kernels::argmin`] returns over the same distances, without writing them out. `None`
/// when K is not a whole number of tiles.
///
/// # Safety
/// `L`'s features are enabled.
#[inline(always)]
unsafe fn nearest<L: Lanes, const N: usize, const V: usize>(
    xs: [&[f32]; N],
    rows: &[f32],
    norms: &[f32],
    k: usize,
) -> Option<[usize; N]> {
    let sub = xs[0].len();
    let width = V * L::N;
    if !k.is_multiple_of(width) || L::N > 16 {
        return None;
    }
    assert!(rows.len() >= sub * k && norms.len() >= k, "encoder tiles");
    assert!(xs.iter().all(|x| x.len() == sub), "sub-vectors");
    let lane_index: [f32; 16] = std::array::from_fn(|i| i as f32);
    // SAFETY: L's features are on; loads read rows[i·K + c0 .. + width] with i < d' and
    // c0 + width <= K, norms[c0 .. + width], xs[g][i] with i < d': inside the slices checked
    // above; lane_index holds 16 >= L::N floats.
    unsafe {
        let iota = L::load(lane_index.as_ptr());
        let mut best = [L::splat(f32::INFINITY); N];
        let mut best_index = [L::splat(0.0); N];
        let mut c0 = 0;
        while c0 < k {
            let start: [L::F; V] =
                std::array::from_fn(|v| L::load(norms.as_ptr().add(c0 + v * L::N)));
            let mut acc = [start; N];
            let mut row = rows.as_ptr().add(c0);
            for i in 0..sub {
                let cs: [L::F; V] = std::array::from_fn(|v| L::load(row.add(v * L::N)));
                for (a, x) in acc.iter_mut().zip(&xs) {
                    let b = L::splat(*x.get_unchecked(i));
                    for (a, &c) in a.iter_mut().zip(&cs) {
                        *a = L::mul_add(b, c, *a);
                    }
                }
                row = row.add(k);
            }
            for ((a, b), bi) in acc.iter().zip(&mut best).zip(&mut best_index) {
                for (v, &d) in a.iter().enumerate() {
                    // Centroid indices are exact in f32 (K <= 2^24).
                    let index = L::add(iota, L::splat((c0 + v * L::N) as f32));
                    *bi = L::select_lt(d, *b, index, *bi);
                    *b = L::select_lt(d, *b, d, *b);
                }
            }
            c0 += width;
        }
        let mut codes = [0usize; N];
        for ((code, &b), &bi) in codes.iter_mut().zip(&best).zip(&best_index) {
            let (mut values, mut indices) = ([0.0f32; 16], [0.0f32; 16]);
            L::store(values.as_mut_ptr(), b);
            L::store(indices.as_mut_ptr(), bi);
            // Branch-free (the winning lane is data, not a pattern a predictor learns): the
            // smallest value, then the smallest index holding it.
            let lanes = values[..L::N].iter().zip(&indices[..L::N]);
            let min = values[..L::N].iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let at = lanes.fold(f32::INFINITY, |at, (&v, &i)| {
                at.min(if v == min { i } else { f32::INFINITY })
            });
            // 0 when nothing is below +inf, as argmin.
            *code = if min < f32::INFINITY { at as usize } else { 0 };
        }
        Some(codes)
    }
}

/// [`Nearest`] in `L`'s registers: four sub-vectors at once (in pairs on 16-register machines),
/// or one; see [`nearest`].
pub(crate) struct LaneNearest<L>(PhantomData<L>);

// SAFETY: only `L`'s intrinsics, reached from entry points compiled with its features.
unsafe impl<L: Lanes> Nearest for LaneNearest<L> {
    #[inline(always)]
    unsafe fn four(
        xs: [&[f32]; GROUP],
        rows: &[f32],
        norms: &[f32],
        k: usize,
    ) -> Option<[usize; GROUP]> {
        // SAFETY: the caller enabled L's features.
        unsafe {
            if L::ENCODE_PAIRS {
                let [a, b] = nearest::<L, 2, 4>([xs[0], xs[1]], rows, norms, k)?;
                let [c, d] = nearest::<L, 2, 4>([xs[2], xs[3]], rows, norms, k)?;
                Some([a, b, c, d])
            } else {
                nearest::<L, 4, 2>(xs, rows, norms, k)
            }
        }
    }
    #[inline(always)]
    unsafe fn one(x: &[f32], rows: &[f32], norms: &[f32], k: usize) -> Option<usize> {
        // SAFETY: as above.
        unsafe { nearest::<L, 1, 4>([x], rows, norms, k).map(|[c]| c) }
    }
}

/// Queries handled together by the prefill products: each loaded vector of keys (or of a value
/// row) serves four of them, their sums in 4 × 2 registers.
pub const PRODUCT_QUERIES: usize = 4;
/// Block `block` of the product kernels' rows (each `len` floats, `stride` apart): its first row,
/// how many rows it has (the last block may have fewer), and a row per register slot — slots
/// past the block repeat its last row and are computed but not stored.
#[inline(always)]
fn row_block(
    data: &[f32],
    n: usize,
    stride: usize,
    len: usize,
    block: usize,
) -> (usize, usize, [&[f32]; PRODUCT_QUERIES]) {
    let q0 = block * PRODUCT_QUERIES;
    let rows = (n - q0).min(PRODUCT_QUERIES);
    let slots = std::array::from_fn(|g| &data[(q0 + g.min(rows - 1)) * stride..][..len]);
    (q0, rows, slots)
}

/// Key columns [`query_key_dots`] computes per step on every architecture's widest registers,
/// and the multiple its row widths are rounded up to.
pub const PRODUCT_TILE: usize = 32;

/// `out[q·ld + t] = Σ_i xs[q·d + i] · kt[i·stride + t]` for the `n` rows of `xs` (`d` floats
/// each) and `t < widths[q / 4]` rounded up to a multiple of [`PRODUCT_TILE`] (whole tiles:
/// `stride` and `ld` must hold them): a block of queries against keys stored transposed
/// (`[d][stride]`), the sums of 4 queries × 2 vectors of keys in registers while `i` runs
/// (ascending, fused multiply-adds). Entries past the rounded width are not written.
///
/// # Safety
/// `L`'s features are enabled.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn query_key_dots<L: Lanes>(
    xs: &[f32],
    n: usize,
    d: usize,
    kt: &[f32],
    stride: usize,
    widths: &[usize],
    out: &mut [f32],
    ld: usize,
) {
    const Q: usize = PRODUCT_QUERIES;
    assert!(
        xs.len() >= n * d && widths.len() >= n.div_ceil(Q),
        "query blocks"
    );
    let rounded = |w: usize| w.next_multiple_of(PRODUCT_TILE);
    assert!(
        widths
            .iter()
            .all(|&w| rounded(w) <= stride && rounded(w) <= ld),
        "block widths"
    );
    assert!(
        kt.len() >= d * stride && out.len() >= n * ld,
        "keys and scores"
    );
    let tile = 2 * L::N;
    assert!(PRODUCT_TILE.is_multiple_of(tile), "tile");
    let blocks = n.div_ceil(Q);
    let widest = widths[..blocks]
        .iter()
        .map(|&w| rounded(w))
        .max()
        .unwrap_or(0);
    // Tiles of keys outside, query blocks inside: a tile's D rows (4–8 KiB) stay in L1 while
    // every block that sees them reads them.
    for t0 in (0..widest).step_by(tile) {
        for (block, &width) in widths[..blocks].iter().enumerate() {
            if t0 >= rounded(width) {
                continue; // causal: this block's queries do not see these keys
            }
            let (q0, rows, x) = row_block(xs, n, d, d, block);
            // SAFETY: L's features are on; loads read kt[i·stride + t0 .. + tile] (i < d,
            // t0 + tile <= rounded width <= stride) and x[g][i] (i < d); stores write
            // out[(q0 + g)·ld + t0 .. + tile] for g < rows, inside out (checked above). Rows
            // past `rows` repeat the last query and are not stored.
            unsafe {
                let mut acc = [[L::splat(0.0); 2]; Q];
                let mut k = kt.as_ptr().add(t0);
                for i in 0..d {
                    let c = [L::load(k), L::load(k.add(L::N))];
                    for (a, x) in acc.iter_mut().zip(&x) {
                        let b = L::splat(*x.get_unchecked(i));
                        a[0] = L::mul_add(b, c[0], a[0]);
                        a[1] = L::mul_add(b, c[1], a[1]);
                    }
                    k = k.add(stride);
                }
                for (g, a) in acc.iter().enumerate().take(rows) {
                    let o = out.as_mut_ptr().add((q0 + g) * ld + t0);
                    L::store(o, a[0]);
                    L::store(o.add(L::N), a[1]);
                }
            }
        }
    }
}

/// `out[q·d + c] = Σ_{t < widths[q / 4]} p[q·ld + t] · v[t·d + c]`: softmax weights of a block of
/// queries times value rows (`[T][d]`), the sums of 4 queries × 2 vectors of columns in
/// registers while `t` runs (ascending, fused multiply-adds). Every weight must multiply a finite
/// value (the caller checks): a zero weight is not skipped.
///
/// # Safety
/// `L`'s features are enabled.
#[inline(always)]
pub unsafe fn weighted_rows<L: Lanes>(
    p: &[f32],
    ld: usize,
    n: usize,
    widths: &[usize],
    v: &[f32],
    d: usize,
    out: &mut [f32],
) {
    const Q: usize = PRODUCT_QUERIES;
    assert!(widths.len() >= n.div_ceil(Q) && widths.iter().all(|&w| w <= ld));
    assert!(
        p.len() >= n * ld && out.len() >= n * d,
        "weights and outputs"
    );
    assert!(widths.iter().all(|&w| v.len() >= w * d), "value rows");
    let strip = 2 * L::N;
    for (block, &width) in widths.iter().enumerate().take(n.div_ceil(Q)) {
        let (q0, rows, w) = row_block(p, n, ld, width, block);
        let mut c0 = 0;
        // SAFETY: L's features are on; loads read v[t·d + c0 .. + strip] (t < width,
        // c0 + strip <= d) and w[g][t]; stores write out[(q0 + g)·d + c0 .. + strip], g < rows.
        unsafe {
            while c0 + strip <= d {
                let mut acc = [[L::splat(0.0); 2]; Q];
                let mut row = v.as_ptr().add(c0);
                for t in 0..width {
                    let c = [L::load(row), L::load(row.add(L::N))];
                    for (a, w) in acc.iter_mut().zip(&w) {
                        let b = L::splat(*w.get_unchecked(t));
                        a[0] = L::mul_add(b, c[0], a[0]);
                        a[1] = L::mul_add(b, c[1], a[1]);
                    }
                    row = row.add(d);
                }
                for (g, a) in acc.iter().enumerate().take(rows) {
                    let o = out.as_mut_ptr().add((q0 + g) * d + c0);
                    L::store(o, a[0]);
                    L::store(o.add(L::N), a[1]);
                }
                c0 += strip;
            }
        }
        for (g, w) in w.iter().enumerate().take(rows) {
            for c in c0..d {
                let mut sum = 0.0f32;
                for (t, &wt) in w.iter().enumerate() {
                    sum = wt.mul_add(v[t * d + c], sum);
                }
                out[(q0 + g) * d + c] = sum;
            }
        }
    }
}
