//! The two inner loops of the op behind one entry each, with a run-time choice of
//! implementation: AVX2+FMA+F16C on x86_64 when the CPU has them, NEON on aarch64, scalar
//! otherwise (or when `LOOKAT_FORCE_SCALAR` is set). The scalar versions are the reference the
//! SIMD ones are tested against.
//!
//! Both entries work on a whole block of tokens, so the dispatch is paid once per block.

#[cfg(target_arch = "aarch64")]
pub mod arm;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use half::f16;

/// Whether the SIMD paths are used on this CPU.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return "avx2+fma+f16c";
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        return "neon";
    }
    "scalar"
}

/// `x[i] = exp(x[i] - shift)`; `-inf` (a masked token) gives exactly 0. Returns the sum of the
/// results (summed in lanes on the SIMD paths).
#[inline]
pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { x86::exp_shifted(x, shift) };
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        // SAFETY: the CPU supports NEON (checked at run time).
        return unsafe { arm::exp_shifted(x, shift) };
    }
    scalar::exp_shifted(x, shift)
}

/// The largest value of `x`, NaN ignored; `-inf` when there is none.
#[inline]
pub fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { x86::max(x) };
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        // SAFETY: the CPU supports NEON (checked at run time).
        return unsafe { arm::max(x) };
    }
    scalar::max(x)
}

/// `acc[c] += Σ_t probs[t] · rows[t·D + c]` with `D = acc.len()`; rows with probability exactly
/// 0 add nothing (a masked row may hold anything). With `copy_to`, every row is also copied
/// there, in the same pass; `stream` asks for stores that bypass the cache (used for present
/// caches too large to stay there; honoured on x86_64 when the destination is aligned).
#[inline]
pub fn accumulate_rows_f32(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f32],
    copy_to: Option<&mut [f32]>,
    stream: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked at run time).
        unsafe { x86::accumulate_rows_f32(acc, probs, rows, copy_to, stream) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        // SAFETY: the CPU supports NEON (checked at run time).
        unsafe { arm::accumulate_rows_f32(acc, probs, rows, copy_to) };
        return;
    }
    let _ = stream;
    scalar::accumulate_rows_f32(acc, probs, rows, copy_to)
}

/// [`accumulate_rows_f32`] for float16 value rows.
#[inline]
pub fn accumulate_rows_f16(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f16],
    copy_to: Option<&mut [f16]>,
    stream: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        unsafe { x86::accumulate_rows_f16(acc, probs, rows, copy_to, stream) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        // SAFETY: as above.
        unsafe { arm::accumulate_rows_f16(acc, probs, rows, copy_to) };
        return;
    }
    let _ = stream;
    scalar::accumulate_rows_f16(acc, probs, rows, copy_to)
}

/// Splits `d` columns into strips of 64, 32, 16 and 8 (8, 4, 2 and 1 eight-column groups, the
/// widths the SIMD strips are compiled for) and calls `strip(first column, groups)` for each;
/// returns the first column left to the scalar tail.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn for_each_strip(d: usize, mut strip: impl FnMut(usize, usize)) -> usize {
    let mut c = 0;
    while d - c >= 64 {
        strip(c, 8);
        c += 64;
    }
    for groups in [4, 2, 1] {
        if d - c >= 8 * groups {
            strip(c, groups);
            c += 8 * groups;
        }
    }
    c
}

/// `ptr + by`, or null when `ptr` is (no copy destination).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn offset<V>(ptr: *mut V, by: usize) -> *mut V {
    if ptr.is_null() {
        ptr
    } else {
        ptr.wrapping_add(by)
    }
}

/// `acc *= c`.
#[inline]
pub fn scale(acc: &mut [f32], c: f32) {
    acc.iter_mut().for_each(|a| *a *= c);
}
