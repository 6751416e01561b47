//! NEON (every aarch64 CPU has it): four lanes per step, scalar tail. Float16 values are widened
//! with FCVTL/FCVTL2, which are part of the base ARMv8 SIMD set (no FP16 extension needed); stable
//! Rust has no float16 vector type, hence the two instructions in `asm!`.

use std::arch::aarch64::*;
use std::arch::asm;
use std::sync::OnceLock;

use half::f16;

pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var_os("LOOKAT_FORCE_SCALAR").is_none()
            && std::arch::is_aarch64_feature_detected!("neon")
    })
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn axpy_f32(acc: &mut [f32], p: f32, row: &[f32]) {
    let n = acc.len().min(row.len());
    let pv = vdupq_n_f32(p);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n, within both slices.
        unsafe {
            let a = vld1q_f32(acc.as_ptr().add(i));
            let v = vld1q_f32(row.as_ptr().add(i));
            vst1q_f32(acc.as_mut_ptr().add(i), vfmaq_f32(a, pv, v));
        }
        i += 4;
    }
    super::scalar::axpy_f32(&mut acc[i..n], p, &row[i..n]);
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn axpy_f16(acc: &mut [f32], p: f32, row: &[f16]) {
    let n = acc.len().min(row.len());
    let pv = vdupq_n_f32(p);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n: eight f16 (16 bytes) and eight f32 within the slices. The asm only
        // converts registers (no memory, no stack).
        unsafe {
            let h = vld1q_u16(row.as_ptr().add(i) as *const u16);
            let lo: float32x4_t;
            let hi: float32x4_t;
            asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) h,
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                options(pure, nomem, nostack),
            );
            let a0 = vld1q_f32(acc.as_ptr().add(i));
            let a1 = vld1q_f32(acc.as_ptr().add(i + 4));
            vst1q_f32(acc.as_mut_ptr().add(i), vfmaq_f32(a0, pv, lo));
            vst1q_f32(acc.as_mut_ptr().add(i + 4), vfmaq_f32(a1, pv, hi));
        }
        i += 8;
    }
    super::scalar::axpy_f16(&mut acc[i..n], p, &row[i..n]);
}
