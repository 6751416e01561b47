//! AVX2 + FMA (+ F16C for float16 values): eight lanes per register, sixteen registers, so value
//! strips hold up to 64 columns (eight accumulators).

use std::arch::x86_64::*;

use half::f16;

use super::lanes::{Lanes, Row};

super::entry_points!("avx2,fma,f16c", Avx2);

/// Whether this CPU runs this module (AVX2, FMA and F16C, and no `LOOKAT_FORCE_SCALAR`).
pub fn available() -> bool {
    super::level() == super::Level::Avx2
}

#[derive(Clone, Copy)]
pub struct Avx2;

// SAFETY: every method is an AVX/AVX2/FMA intrinsic; callers run with those features.
unsafe impl Lanes for Avx2 {
    const N: usize = 8;
    const MAX_STRIP: usize = 8;
    const ENCODE_PAIRS: bool = true;
    type F = __m256;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: AVX is enabled (trait contract).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: eight readable floats (caller); unaligned load.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: eight writable floats (caller); unaligned store.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA is enabled.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn neg_mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA is enabled.
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX is enabled. MAXPS returns its second operand when either is NaN.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn round(a: __m256) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m256) -> __m256 {
        // SAFETY: AVX2 is enabled.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    unsafe fn select_lt(a: __m256, b: __m256, x: __m256, y: __m256) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)) }
    }
    #[inline(always)]
    unsafe fn zero_below(v: __m256, x: __m256, bound: f32) -> __m256 {
        // SAFETY: AVX is enabled.
        unsafe { _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(bound)), v) }
    }
    #[inline(always)]
    unsafe fn reduce_sum(v: __m256) -> f32 {
        let mut lanes = [0.0f32; 8];
        // SAFETY: eight writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }
    #[inline(always)]
    unsafe fn reduce_max(v: __m256) -> f32 {
        let mut lanes = [0.0f32; 8];
        // SAFETY: eight writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        super::scalar::max(&lanes)
    }
    #[inline(always)]
    unsafe fn store_fence() {
        // SAFETY: SSE is part of x86_64.
        unsafe { _mm_sfence() }
    }
}

// SAFETY: AVX intrinsics only; callers run with the features.
unsafe impl Row<Avx2> for f32 {
    type Raw = __m256;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> (__m256, __m256) {
        // SAFETY: eight readable floats (caller).
        let v = unsafe { _mm256_loadu_ps(p) };
        (v, v)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, raw: __m256, stream: bool) {
        // SAFETY: eight writable floats; 32-byte aligned when `stream` (checked by the caller).
        unsafe {
            if stream {
                _mm256_stream_ps(p, raw)
            } else {
                _mm256_storeu_ps(p, raw)
            }
        }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

// SAFETY: AVX and F16C intrinsics only; callers run with the features.
unsafe impl Row<Avx2> for f16 {
    type Raw = __m128i;
    #[inline(always)]
    unsafe fn load(p: *const f16) -> (__m256, __m128i) {
        // SAFETY: eight readable halves, 16 bytes (caller); F16C widens them.
        unsafe {
            let h = _mm_loadu_si128(p as *const __m128i);
            (_mm256_cvtph_ps(h), h)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, raw: __m128i, stream: bool) {
        // SAFETY: sixteen writable bytes; 16-byte aligned when `stream` (checked by the caller).
        unsafe {
            if stream {
                _mm_stream_si128(p as *mut __m128i, raw)
            } else {
                _mm_storeu_si128(p as *mut __m128i, raw)
            }
        }
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

// SAFETY: SSE2/AVX2 integer intrinsics only; callers run with the features.
unsafe impl Row<Avx2> for i8 {
    type Raw = __m128i;
    #[inline(always)]
    unsafe fn load(p: *const i8) -> (__m256, __m128i) {
        // SAFETY: eight readable bytes (caller); sign-extended to eight int32, then converted.
        unsafe {
            let q = _mm_loadl_epi64(p as *const __m128i);
            (_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), q)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut i8, raw: __m128i, _stream: bool) {
        // SAFETY: eight writable bytes (caller).
        unsafe { _mm_storel_epi64(p as *mut __m128i, raw) }
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}
