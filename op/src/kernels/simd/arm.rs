//! NEON (every aarch64 CPU has it): four lanes per register, thirty-two registers, so value strips
//! hold up to 64 columns (sixteen accumulators). Float16 values are widened with FCVTL, part of
//! the base ARMv8 SIMD set (no FP16 extension needed); stable Rust has no float16 vector type,
//! hence the one instruction in `asm!`.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::lanes::{Lanes, Row};

super::entry_points!("neon", Neon);

/// Whether this CPU runs this module (NEON, and no `LOOKAT_FORCE_SCALAR`).
pub fn available() -> bool {
    super::level() == super::Level::Neon
}

#[derive(Clone, Copy)]
pub struct Neon;

// SAFETY: every method is a NEON intrinsic; callers run with NEON enabled.
unsafe impl Lanes for Neon {
    const N: usize = 4;
    const MAX_STRIP: usize = 16;
    const ENCODE_PAIRS: bool = false;
    type F = float32x4_t;

    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        // SAFETY: NEON is enabled (trait contract).
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: four readable floats (caller).
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: four writable floats (caller).
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled; FMLA computes c + a·b fused.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn neg_mul_add(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled; FMLS computes c − a·b fused.
        unsafe { vfmsq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled.
        unsafe { vminq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled. FMAXNM returns the number when one operand is NaN.
        unsafe { vmaxnmq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn round(a: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled; FRINTN rounds to nearest, ties to even.
        unsafe { vrndnq_f32(a) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: float32x4_t) -> float32x4_t {
        // SAFETY: NEON is enabled.
        unsafe {
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
                vcvtq_s32_f32(n),
                vdupq_n_s32(127),
            )))
        }
    }
    #[inline(always)]
    unsafe fn select_lt(
        a: float32x4_t,
        b: float32x4_t,
        x: float32x4_t,
        y: float32x4_t,
    ) -> float32x4_t {
        // SAFETY: NEON is enabled. FCMGT is false when either operand is NaN.
        unsafe { vbslq_f32(vcltq_f32(a, b), x, y) }
    }
    #[inline(always)]
    unsafe fn zero_below(v: float32x4_t, x: float32x4_t, bound: f32) -> float32x4_t {
        // SAFETY: NEON is enabled.
        unsafe {
            let below = vcltq_f32(x, vdupq_n_f32(bound));
            vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(v), below))
        }
    }
    #[inline(always)]
    unsafe fn reduce_sum(v: float32x4_t) -> f32 {
        // SAFETY: NEON is enabled.
        unsafe { vaddvq_f32(v) }
    }
    #[inline(always)]
    unsafe fn reduce_max(v: float32x4_t) -> f32 {
        // SAFETY: NEON is enabled; FMAXNMV ignores NaN lanes.
        unsafe { vmaxnmvq_f32(v) }
    }
}

// SAFETY: NEON intrinsics only; callers run with NEON enabled.
unsafe impl Row<Neon> for f32 {
    type Raw = float32x4_t;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> (float32x4_t, float32x4_t) {
        // SAFETY: four readable floats (caller).
        let v = unsafe { vld1q_f32(p) };
        (v, v)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, raw: float32x4_t, _stream: bool) {
        // SAFETY: four writable floats (caller).
        unsafe { vst1q_f32(p, raw) }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

// SAFETY: NEON intrinsics and one register-only FCVTL; callers run with NEON enabled.
unsafe impl Row<Neon> for f16 {
    type Raw = uint16x4_t;
    #[inline(always)]
    unsafe fn load(p: *const f16) -> (float32x4_t, uint16x4_t) {
        // SAFETY: four readable halves, 8 bytes (caller). The asm only converts registers (no
        // memory, no stack).
        unsafe {
            let h = vld1_u16(p as *const u16);
            let wide: float32x4_t;
            asm!(
                "fcvtl {wide:v}.4s, {h:v}.4h",
                h = in(vreg) h,
                wide = out(vreg) wide,
                options(pure, nomem, nostack),
            );
            (wide, h)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, raw: uint16x4_t, _stream: bool) {
        // SAFETY: eight writable bytes (caller).
        unsafe { vst1_u16(p as *mut u16, raw) }
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

// SAFETY: NEON intrinsics and an unaligned 4-byte read; callers run with NEON enabled.
unsafe impl Row<Neon> for i8 {
    type Raw = u32;
    #[inline(always)]
    unsafe fn load(p: *const i8) -> (float32x4_t, u32) {
        // SAFETY: four readable bytes (caller), read unaligned; then widened 8 → 16 → 32 bits
        // and converted.
        unsafe {
            let raw = std::ptr::read_unaligned(p as *const u32);
            let q = vreinterpret_s8_u32(vdup_n_u32(raw));
            let wide = vmovl_s16(vget_low_s16(vmovl_s8(q)));
            (vcvtq_f32_s32(wide), raw)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut i8, raw: u32, _stream: bool) {
        // SAFETY: four writable bytes (caller).
        unsafe { std::ptr::write_unaligned(p as *mut u32, raw) }
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}
