//! NEON (every aarch64 CPU has it): four lanes per step, scalar tails. Float16 values are widened
//! with FCVTL/FCVTL2, which are part of the base ARMv8 SIMD set (no FP16 extension needed); stable
//! Rust has no float16 vector type, hence the two instructions in `asm!`.
//!
//! As on x86, value rows are summed with the accumulator in registers for a block of rows (up to
//! 64 columns, sixteen of the 32 vector registers, at a time).

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

/// `exp` of four lanes (same reduction and polynomial as the x86 path, about 2 ulp); lanes
/// below -87, `-inf` included, give 0.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let underflow = vcltq_f32(x, vdupq_n_f32(-87.0));
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut y = vdupq_n_f32(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = vfmaq_f32(vdupq_n_f32(c), y, r);
    }
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
    let pow2n = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
        vcvtq_s32_f32(n),
        vdupq_n_s32(127),
    )));
    let result = vmulq_f32(y, pow2n);
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(result), underflow))
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    let n = x.len();
    let s = vdupq_n_f32(shift);
    let mut sum = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n, inside the slice.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp4(vsubq_f32(vld1q_f32(p), s));
            vst1q_f32(p, e);
            sum = vaddq_f32(sum, e);
        }
        i += 4;
    }
    vaddvq_f32(sum) + super::scalar::exp_shifted(&mut x[i..], shift)
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn max(x: &[f32]) -> f32 {
    let n = x.len();
    let mut m = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: i + 4 <= n. FMAXNM returns the number when one operand is NaN: NaN ignored.
        m = unsafe { vmaxnmq_f32(m, vld1q_f32(x.as_ptr().add(i))) };
        i += 4;
    }
    vmaxnmvq_f32(m).max(super::scalar::max(&x[i..]))
}

/// How the rows of a block are read, eight columns (two registers) at a time, and copied.
trait RowFormat: Copy {
    unsafe fn load8(ptr: *const Self) -> (float32x4_t, float32x4_t, uint16x8_t, uint16x8_t);
    unsafe fn store8(ptr: *mut Self, raw: (uint16x8_t, uint16x8_t));
    fn scalar(self) -> f32;
}

impl RowFormat for f32 {
    #[inline(always)]
    unsafe fn load8(ptr: *const f32) -> (float32x4_t, float32x4_t, uint16x8_t, uint16x8_t) {
        // SAFETY: the caller guarantees eight readable floats.
        unsafe {
            let lo = vld1q_f32(ptr);
            let hi = vld1q_f32(ptr.add(4));
            (lo, hi, vreinterpretq_u16_f32(lo), vreinterpretq_u16_f32(hi))
        }
    }
    #[inline(always)]
    unsafe fn store8(ptr: *mut f32, raw: (uint16x8_t, uint16x8_t)) {
        // SAFETY: the caller guarantees eight writable floats.
        unsafe {
            vst1q_f32(ptr, vreinterpretq_f32_u16(raw.0));
            vst1q_f32(ptr.add(4), vreinterpretq_f32_u16(raw.1));
        }
    }
    fn scalar(self) -> f32 {
        self
    }
}

impl RowFormat for f16 {
    #[inline(always)]
    unsafe fn load8(ptr: *const f16) -> (float32x4_t, float32x4_t, uint16x8_t, uint16x8_t) {
        // SAFETY: the caller guarantees eight readable halves (16 bytes). The asm only converts
        // registers (no memory, no stack).
        unsafe {
            let h = vld1q_u16(ptr as *const u16);
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
            (lo, hi, h, h)
        }
    }
    #[inline(always)]
    unsafe fn store8(ptr: *mut f16, raw: (uint16x8_t, uint16x8_t)) {
        // SAFETY: the caller guarantees sixteen writable bytes.
        unsafe { vst1q_u16(ptr as *mut u16, raw.0) }
    }
    fn scalar(self) -> f32 {
        self.to_f32()
    }
}

/// One column strip of `8·W` columns over all rows, accumulator in `2·W` registers.
///
/// # Safety
/// `acc` holds `8·W` floats; `rows` (and `copy`, when not null) hold `probs.len()` rows of
/// `stride` elements with at least `8·W` from the strip start; NEON is available.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn strip<V: RowFormat, const W: usize>(
    acc: *mut f32,
    probs: &[f32],
    rows: *const V,
    copy: *mut V,
    stride: usize,
) {
    // SAFETY: all pointer arithmetic stays inside the ranges the caller guarantees.
    unsafe {
        let mut a: [(float32x4_t, float32x4_t); W] =
            std::array::from_fn(|v| (vld1q_f32(acc.add(8 * v)), vld1q_f32(acc.add(8 * v + 4))));
        // Each eight-column piece is loaded, copied and added before the next is loaded (see the
        // x86 version: holding whole rows would spill accumulators).
        for (t, &p) in probs.iter().enumerate() {
            let row = rows.add(t * stride);
            let pv = vdupq_n_f32(p);
            if copy.is_null() {
                if p != 0.0 {
                    for (v, av) in a.iter_mut().enumerate() {
                        let (lo, hi, _, _) = V::load8(row.add(8 * v));
                        av.0 = vfmaq_f32(av.0, pv, lo);
                        av.1 = vfmaq_f32(av.1, pv, hi);
                    }
                }
            } else {
                let dst = copy.add(t * stride);
                for (v, av) in a.iter_mut().enumerate() {
                    let (lo, hi, raw_lo, raw_hi) = V::load8(row.add(8 * v));
                    V::store8(dst.add(8 * v), (raw_lo, raw_hi));
                    if p != 0.0 {
                        av.0 = vfmaq_f32(av.0, pv, lo);
                        av.1 = vfmaq_f32(av.1, pv, hi);
                    }
                }
            }
        }
        for (v, &(lo, hi)) in a.iter().enumerate() {
            vst1q_f32(acc.add(8 * v), lo);
            vst1q_f32(acc.add(8 * v + 4), hi);
        }
    }
}

/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
unsafe fn accumulate_rows<V: RowFormat>(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[V],
    mut copy_to: Option<&mut [V]>,
) {
    let d = acc.len();
    assert_eq!(rows.len(), probs.len() * d, "value rows and probabilities");
    if let Some(dst) = &copy_to {
        assert_eq!(dst.len(), rows.len(), "copy destination");
    }
    let copy = copy_to
        .as_deref_mut()
        .map_or(std::ptr::null_mut(), <[V]>::as_mut_ptr);
    let tail = super::for_each_strip(d, |c, groups| {
        let acc = acc.as_mut_ptr().wrapping_add(c);
        let (rows, copy) = (rows.as_ptr().wrapping_add(c), super::offset(copy, c));
        // SAFETY: the strip covers columns c..c + 8·groups <= d of every row; NEON is available.
        unsafe {
            match groups {
                8 => strip::<V, 8>(acc, probs, rows, copy, d),
                4 => strip::<V, 4>(acc, probs, rows, copy, d),
                2 => strip::<V, 2>(acc, probs, rows, copy, d),
                _ => strip::<V, 1>(acc, probs, rows, copy, d),
            }
        }
    });
    super::scalar::accumulate_columns(acc, probs, rows, copy_to, tail, V::scalar);
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn accumulate_rows_f32(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f32],
    copy_to: Option<&mut [f32]>,
) {
    // SAFETY: same requirements.
    unsafe { accumulate_rows(acc, probs, rows, copy_to) }
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn accumulate_rows_f16(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f16],
    copy_to: Option<&mut [f16]>,
) {
    // SAFETY: same requirements.
    unsafe { accumulate_rows(acc, probs, rows, copy_to) }
}
