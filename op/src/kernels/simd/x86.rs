//! AVX2 + FMA (+ F16C for float16 values): eight lanes per step, scalar tail.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::f16;

pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var_os("LOOKAT_FORCE_SCALAR").is_none()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32(acc: &mut [f32], p: f32, row: &[f32]) {
    let n = acc.len().min(row.len());
    let pv = _mm256_set1_ps(p);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within both slices; unaligned loads/stores.
        unsafe {
            let a = _mm256_loadu_ps(acc.as_ptr().add(i));
            let v = _mm256_loadu_ps(row.as_ptr().add(i));
            _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_fmadd_ps(pv, v, a));
        }
        i += 8;
    }
    super::scalar::axpy_f32(&mut acc[i..n], p, &row[i..n]);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16(acc: &mut [f32], p: f32, row: &[f16]) {
    let n = acc.len().min(row.len());
    let pv = _mm256_set1_ps(p);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n; eight f16 values are 16 bytes, loaded unaligned.
        unsafe {
            let h = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
            let v = _mm256_cvtph_ps(h);
            let a = _mm256_loadu_ps(acc.as_ptr().add(i));
            _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_fmadd_ps(pv, v, a));
        }
        i += 8;
    }
    super::scalar::axpy_f16(&mut acc[i..n], p, &row[i..n]);
}
