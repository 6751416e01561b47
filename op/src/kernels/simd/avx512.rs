//! AVX-512 (F, BW, VL, with FMA and F16C): sixteen lanes per register, so a 64-column value row is
//! four registers and one load widens sixteen int8 or float16 values. Same algorithms as
//! [`super::x86`]; chosen over it when the CPU has these features.

use std::arch::x86_64::*;

use half::f16;

use super::lanes::{Lanes, Row};

super::entry_points!("avx512f,avx512bw,avx512vl,avx2,fma,f16c", Avx512);

/// Whether this CPU runs this module (see [`super::level`]).
pub fn available() -> bool {
    super::level() == super::Level::Avx512
}

#[derive(Clone, Copy)]
pub struct Avx512;

// SAFETY: every method is an AVX-512F intrinsic; callers run with those features.
unsafe impl Lanes for Avx512 {
    const N: usize = 16;
    const MAX_STRIP: usize = 16;
    const ENCODE_PAIRS: bool = false;
    type F = __m512;

    #[inline(always)]
    unsafe fn scale_weights(
        out: &mut [f32],
        weights: &[f32],
        rows: &[i8],
        stride: usize,
        at: usize,
    ) {
        let n = out.len();
        assert!(weights.len() >= n && rows.len() >= n * stride && at + 4 <= stride);
        let mut t = 0;
        // Sixteen rows' scales in one gather (byte offsets t·stride + at, within i32 as long as
        // the chunk is: callers pass at most a few hundred rows of a few hundred bytes).
        assert!(n * stride <= i32::MAX as usize);
        // SAFETY: AVX-512F is enabled; every gathered offset, load and store stays inside the
        // slices, whose lengths were checked above.
        unsafe {
            let lane = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(stride as i32),
            );
            while t + 16 <= n {
                let offsets = _mm512_add_epi32(lane, _mm512_set1_epi32((t * stride + at) as i32));
                let scales = _mm512_i32gather_ps::<1>(offsets, rows.as_ptr().cast());
                let w = _mm512_loadu_ps(weights.as_ptr().add(t));
                let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(w, _mm512_setzero_ps());
                _mm512_storeu_ps(
                    out.as_mut_ptr().add(t),
                    _mm512_maskz_mul_ps(nonzero, w, scales),
                );
                t += 16;
            }
        }
        super::scalar::scale_weights(
            &mut out[t..],
            &weights[t..],
            &rows[t * stride..],
            stride,
            at,
        );
    }

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: AVX-512F is enabled (trait contract).
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: sixteen readable floats (caller); unaligned load.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: sixteen writable floats (caller); unaligned store.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn neg_mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled. VMAXPS returns its second operand when either is NaN.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn round(a: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled; to nearest, ties to even, no exceptions.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n),
                _mm512_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    unsafe fn select_lt(a: __m512, b: __m512, x: __m512, y: __m512) -> __m512 {
        // SAFETY: AVX-512F is enabled.
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b), y, x) }
    }
    #[inline(always)]
    unsafe fn zero_below(v: __m512, x: __m512, bound: f32) -> __m512 {
        // SAFETY: AVX-512F is enabled. Lanes with x < bound (ordered) are zeroed; NaN keeps v,
        // as the AVX2 version's and-not of an ordered compare does.
        unsafe {
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(bound));
            _mm512_maskz_mov_ps(!below, v)
        }
    }
    #[inline(always)]
    unsafe fn reduce_sum(v: __m512) -> f32 {
        let mut lanes = [0.0f32; 16];
        // SAFETY: sixteen writable floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }
    #[inline(always)]
    unsafe fn reduce_max(v: __m512) -> f32 {
        let mut lanes = [0.0f32; 16];
        // SAFETY: sixteen writable floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        super::scalar::max(&lanes)
    }
    #[inline(always)]
    unsafe fn store_fence() {
        // SAFETY: SSE is part of x86_64.
        unsafe { _mm_sfence() }
    }
}

// SAFETY: AVX-512F intrinsics only; callers run with the features.
unsafe impl Row<Avx512> for f32 {
    type Raw = __m512;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> (__m512, __m512) {
        // SAFETY: sixteen readable floats (caller).
        let v = unsafe { _mm512_loadu_ps(p) };
        (v, v)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, raw: __m512, stream: bool) {
        // SAFETY: sixteen writable floats; 64-byte aligned when `stream` (checked by the caller).
        unsafe {
            if stream {
                _mm512_stream_ps(p, raw)
            } else {
                _mm512_storeu_ps(p, raw)
            }
        }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

// SAFETY: AVX-512F and AVX intrinsics only; callers run with the features.
unsafe impl Row<Avx512> for f16 {
    type Raw = __m256i;
    #[inline(always)]
    unsafe fn load(p: *const f16) -> (__m512, __m256i) {
        // SAFETY: sixteen readable halves, 32 bytes (caller); VCVTPH2PS widens them.
        unsafe {
            let h = _mm256_loadu_si256(p as *const __m256i);
            (_mm512_cvtph_ps(h), h)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f16, raw: __m256i, stream: bool) {
        // SAFETY: 32 writable bytes; 32-byte aligned when `stream` (checked by the caller).
        unsafe {
            if stream {
                _mm256_stream_si256(p as *mut __m256i, raw)
            } else {
                _mm256_storeu_si256(p as *mut __m256i, raw)
            }
        }
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

// SAFETY: SSE2/AVX-512F integer intrinsics only; callers run with the features.
unsafe impl Row<Avx512> for i8 {
    type Raw = __m128i;
    #[inline(always)]
    unsafe fn load(p: *const i8) -> (__m512, __m128i) {
        // SAFETY: sixteen readable bytes (caller); sign-extended to sixteen int32, then converted.
        unsafe {
            let q = _mm_loadu_si128(p as *const __m128i);
            (_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), q)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut i8, raw: __m128i, _stream: bool) {
        // SAFETY: sixteen writable bytes (caller).
        unsafe { _mm_storeu_si128(p as *mut __m128i, raw) }
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}
