//! The innermost loop of the op, `acc += p · value_row`, behind one entry per value type, with a
//! run-time choice of implementation: AVX2+FMA(+F16C) on x86_64 when the CPU has them, NEON on
//! aarch64, scalar otherwise (or when `LOOKAT_FORCE_SCALAR` is set). The scalar versions are the
//! reference the SIMD ones are tested against.

#[cfg(target_arch = "aarch64")]
pub mod arm;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use half::f16;

/// Whether the AVX2 paths are used on this CPU.
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

#[inline]
pub fn axpy_f32(acc: &mut [f32], p: f32, row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked at run time).
        unsafe { x86::axpy_f32(acc, p, row) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        // SAFETY: the CPU supports NEON (checked at run time).
        unsafe { arm::axpy_f32(acc, p, row) };
        return;
    }
    scalar::axpy_f32(acc, p, row)
}

#[inline]
pub fn axpy_f16(acc: &mut [f32], p: f32, row: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: as above.
        unsafe { x86::axpy_f16(acc, p, row) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if arm::available() {
        // SAFETY: as above.
        unsafe { arm::axpy_f16(acc, p, row) };
        return;
    }
    scalar::axpy_f16(acc, p, row)
}

/// `acc *= c`.
#[inline]
pub fn scale(acc: &mut [f32], c: f32) {
    acc.iter_mut().for_each(|a| *a *= c);
}
