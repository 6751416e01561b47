//! The op's vector kernels behind one dispatch. The algorithms are written once, over a few
//! vector operations ([`lanes::Lanes`]), and compiled per architecture with its target features:
//! AVX2+FMA+F16C on x86_64 when the CPU has them, NEON on aarch64. [`scalar`] holds the portable
//! versions: what runs elsewhere (or with `LOOKAT_FORCE_SCALAR`), and the reference the SIMD
//! paths are tested against.
//!
//! Every entry works on a whole block of tokens (or vectors), so the dispatch is paid once per
//! block.

#[cfg(target_arch = "aarch64")]
pub mod arm;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub(crate) mod lanes;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use half::f16;

/// The code path this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Scalar,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 with AVX-512 F, BW and VL besides AVX2, FMA and F16C.
    Avx512,
    /// aarch64 (NEON is part of the base architecture).
    Neon,
}

/// The level chosen once per process: the best the CPU has, or [`Level::Scalar`] when
/// `LOOKAT_FORCE_SCALAR` is set; `LOOKAT_MAX_SIMD=avx2` keeps an AVX-512 CPU on the AVX2 path (so
/// that both x86_64 paths can be tested on one machine).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if std::env::var_os("LOOKAT_FORCE_SCALAR").is_some() {
            return Level::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            let capped = std::env::var("LOOKAT_MAX_SIMD").is_ok_and(|v| v == "avx2");
            if !capped
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                return Level::Avx512;
            }
            return Level::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Level::Neon;
        }
        Level::Scalar
    })
}

/// The chosen level's name, for reports.
pub fn simd_level() -> &'static str {
    match level() {
        Level::Scalar => "scalar",
        Level::Avx2 => "avx2+fma+f16c",
        Level::Avx512 => "avx512f+bw+vl",
        Level::Neon => "neon",
    }
}

/// Calls entry point `$f` of the architecture module the CPU's [`level`] selects (see
/// [`entry_points!`]), or evaluates `$scalar` on the portable path.
macro_rules! dispatch {
    ($f:ident($($arg:expr),* $(,)?) else $scalar:expr) => {{
        match $crate::kernels::simd::level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: level() returns Avx2 only when the CPU has AVX2, FMA and F16C.
            $crate::kernels::simd::Level::Avx2 => unsafe { $crate::kernels::simd::x86::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: level() returns Avx512 only when the CPU has AVX-512 F/BW/VL, AVX2, FMA
            // and F16C.
            $crate::kernels::simd::Level::Avx512 => unsafe { $crate::kernels::simd::avx512::$f($($arg),*) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: level() returns Neon only when the CPU has NEON.
            $crate::kernels::simd::Level::Neon => unsafe { $crate::kernels::simd::arm::$f($($arg),*) },
            _ => $scalar,
        }
    }};
}
pub(crate) use dispatch;

/// The entry points of one architecture: each compiles a [`lanes`] algorithm (or the codebook
/// loops, with fused multiply-adds) with that architecture's target features. Expanded once in
/// `x86.rs` and once in `arm.rs`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! entry_points {
    ($features:literal, $lanes:ty) => {
        /// # Safety
        /// The CPU must have this module's target features.
        #[target_feature(enable = $features)]
        pub unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
            // SAFETY: compiled with the features; the caller checked the CPU.
            unsafe { $crate::kernels::simd::lanes::exp_shifted::<$lanes>(x, shift) }
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn max(x: &[f32]) -> f32 {
            // SAFETY: as above.
            unsafe { $crate::kernels::simd::lanes::max::<$lanes>(x) }
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn accumulate_rows<V: $crate::kernels::simd::lanes::Row<$lanes>>(
            acc: &mut [&mut [f32]],
            probs: &[&[f32]],
            rows: &[V],
            copy_to: Option<&mut [V]>,
            stream: bool,
        ) {
            // SAFETY: as above.
            unsafe {
                $crate::kernels::simd::lanes::accumulate_rows::<$lanes, V>(
                    acc, probs, rows, copy_to, stream,
                )
            }
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn accumulate_int8(acc: &mut [&mut [f32]], weights: &[&[f32]], rows: &[i8]) {
            // SAFETY: as above.
            unsafe { $crate::kernels::simd::lanes::accumulate_int8::<$lanes>(acc, weights, rows) }
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn query_key_dots(
            xs: &[f32],
            n: usize,
            d: usize,
            kt: &[f32],
            stride: usize,
            widths: &[usize],
            out: &mut [f32],
            ld: usize,
        ) {
            // SAFETY: as above.
            unsafe {
                $crate::kernels::simd::lanes::query_key_dots::<$lanes>(
                    xs, n, d, kt, stride, widths, out, ld,
                )
            }
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn weighted_rows(
            p: &[f32],
            ld: usize,
            n: usize,
            widths: &[usize],
            v: &[f32],
            d: usize,
            out: &mut [f32],
        ) {
            // SAFETY: as above.
            unsafe {
                $crate::kernels::simd::lanes::weighted_rows::<$lanes>(p, ld, n, widths, v, d, out)
            }
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn quantize_int8_row(src: &[f32], dst: &mut [i8]) {
            $crate::kernels::value::quantize_int8_row(src, dst)
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn build_luts<'a>(
            book: &$crate::kernels::codebook::PreparedCodebook,
            n: usize,
            query: impl Fn(usize) -> &'a [f32],
            scale: f32,
            luts: &mut [f32],
        ) {
            book.build_luts_with::<true>(n, query, scale, luts)
        }

        /// # Safety
        /// As above.
        #[target_feature(enable = $features)]
        pub unsafe fn encode_keys<'a>(
            book: &$crate::kernels::codebook::PreparedCodebook,
            n: usize,
            key: impl Fn(usize) -> &'a [f32],
            codes: &mut [u8],
        ) {
            book.encode_keys_with::<true, $crate::kernels::simd::lanes::LaneNearest<$lanes>>(
                n, key, codes,
            )
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use entry_points;

/// Asks for the cache line holding `at` ahead of a read: a hint that never faults, so `at` may
/// lie past the end of the data; nothing on architectures without a stable prefetch.
#[inline(always)]
pub(crate) fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and never faults; SSE is baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint: it never faults and changes no register or memory.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) at, options(nostack, readonly, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = at;
}

/// `x[i] = exp(x[i] - shift)`; `-inf` (a masked token) gives exactly 0. Returns the sum of the
/// results (summed in lanes on the SIMD paths).
#[inline]
pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    dispatch!(exp_shifted(x, shift) else scalar::exp_shifted(x, shift))
}

/// The largest value of `x`, NaN ignored; `-inf` when there is none.
#[inline]
pub fn max(x: &[f32]) -> f32 {
    dispatch!(max(x) else scalar::max(x))
}

/// Queries one value pass serves at most: their accumulators share the registers of a strip.
pub const GROUP_MAX: usize = 4;

/// Checks the shapes of a grouped value accumulation — 1 to [`GROUP_MAX`] queries, each with an
/// accumulator of the same `D` floats and a weight per row, rows of `D + extra` elements — and
/// returns `D`.
pub(crate) fn group_shape(
    acc: &[&mut [f32]],
    probs: &[&[f32]],
    rows_len: usize,
    extra: usize,
) -> usize {
    assert!(
        (1..=GROUP_MAX).contains(&acc.len()) && probs.len() == acc.len(),
        "1 to {GROUP_MAX} accumulators and as many weight vectors, got {} and {}",
        acc.len(),
        probs.len()
    );
    let (d, tokens) = (acc[0].len(), probs[0].len());
    assert!(
        acc.iter().all(|a| a.len() == d) && probs.iter().all(|p| p.len() == tokens),
        "accumulators of one length and weight vectors of one length"
    );
    assert_eq!(rows_len, tokens * (d + extra), "value rows and weights");
    d
}

/// `acc[q][c] += Σ_t probs[q][t] · rows[t·D + c]` for a group of queries (`D = acc[q].len()`,
/// at most [`GROUP_MAX`] queries): each row is read once for all of them. A row with probability
/// exactly 0 adds nothing to that query (a masked row may hold anything). With `copy_to`, every
/// row is also copied there, in the same pass; `stream` asks for stores that bypass the cache
/// (used for present caches too large to stay there; honoured on x86_64 when the destination is
/// aligned).
#[inline]
pub fn accumulate_rows_f32(
    acc: &mut [&mut [f32]],
    probs: &[&[f32]],
    rows: &[f32],
    copy_to: Option<&mut [f32]>,
    stream: bool,
) {
    dispatch!(accumulate_rows(acc, probs, rows, copy_to, stream)
        else scalar::accumulate_rows_f32(acc, probs, rows, copy_to))
}

/// [`accumulate_rows_f32`] for float16 value rows.
#[inline]
pub fn accumulate_rows_f16(
    acc: &mut [&mut [f32]],
    probs: &[&[f32]],
    rows: &[f16],
    copy_to: Option<&mut [f16]>,
    stream: bool,
) {
    dispatch!(accumulate_rows(acc, probs, rows, copy_to, stream)
        else scalar::accumulate_rows_f16(acc, probs, rows, copy_to))
}

/// [`accumulate_rows_f32`] for int8 rows (D values, then the row's float32 scale in four bytes;
/// `rows.len() = weights[q].len() · (D + 4)`): each nonzero weight is multiplied by its row's
/// scale as the row is read, the int8 values widened to float32 in registers (once for the whole
/// group) and accumulated. With `copy_to`, the rows (scales included) are copied first.
#[inline]
pub fn accumulate_rows_int8(
    acc: &mut [&mut [f32]],
    weights: &[&[f32]],
    rows: &[i8],
    copy_to: Option<&mut [i8]>,
) {
    group_shape(acc, weights, rows.len(), 4);
    if let Some(dst) = copy_to {
        dst.copy_from_slice(rows);
    }
    dispatch!(accumulate_int8(acc, weights, rows) else scalar::accumulate_rows_int8(acc, weights, rows))
}

/// The prefill's score product: `out[q·ld + t] = Σ_i xs[q·d + i] · kt[i·stride + t]` for the
/// `n` query rows and `t < widths[q / PRODUCT_QUERIES]` rounded up to a multiple of
/// [`PRODUCT_TILE`] (keys transposed, `[d][stride]`; `stride` and `ld` hold the rounded widths);
/// entries past that are left as they were.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn query_key_dots(
    xs: &[f32],
    n: usize,
    d: usize,
    kt: &[f32],
    stride: usize,
    widths: &[usize],
    out: &mut [f32],
    ld: usize,
) {
    dispatch!(query_key_dots(xs, n, d, kt, stride, widths, out, ld)
        else scalar::query_key_dots(xs, n, d, kt, stride, widths, out, ld))
}

/// The prefill's output product: `out[q·d + c] = Σ_{t < widths[q / PRODUCT_QUERIES]} p[q·ld + t]
/// · v[t·d + c]` (weights of zero are multiplied, not skipped: the values must be finite).
#[inline]
pub fn weighted_rows(
    p: &[f32],
    ld: usize,
    n: usize,
    widths: &[usize],
    v: &[f32],
    d: usize,
    out: &mut [f32],
) {
    dispatch!(weighted_rows(p, ld, n, widths, v, d, out)
        else scalar::weighted_rows(p, ld, n, widths, v, d, out))
}

pub use lanes::{PRODUCT_QUERIES, PRODUCT_TILE};

/// One int8 value row from D floats (absmax scale; see `ValueElem::store_row`), compiled with
/// the SIMD level's features.
#[inline]
pub fn quantize_int8_row(src: &[f32], dst: &mut [i8]) {
    dispatch!(quantize_int8_row(src, dst) else super::value::quantize_int8_row(src, dst))
}

/// `acc *= c`.
#[inline]
pub fn scale(acc: &mut [f32], c: f32) {
    acc.iter_mut().for_each(|a| *a *= c);
}
