//! AVX2 + FMA (+ F16C for float16 values): eight lanes per step, scalar tails.
//!
//! Value rows are summed with the accumulator held in registers for a whole block of rows (up to
//! 64 columns, eight registers, at a time), so the only memory traffic per row is the row itself
//! and, on the decode path, its copy into the present cache.

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

/// `exp` of eight lanes (Cephes-style range reduction and degree-5 polynomial, about 2 ulp);
/// lanes below -87 (where f32 `exp` leaves the normal range), `-inf` included, give 0.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // x - n·ln2 in two steps, so that r keeps its low bits.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2n))
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    let n = x.len();
    let s = _mm256_set1_ps(shift);
    let mut sum = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, inside the slice; unaligned load and store.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), s));
            _mm256_storeu_ps(p, e);
            sum = _mm256_add_ps(sum, e);
        }
        i += 8;
    }
    horizontal_sum(sum) + super::scalar::exp_shifted(&mut x[i..], shift)
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn max(x: &[f32]) -> f32 {
    let n = x.len();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n. MAXPS returns its second operand when either is NaN: NaN ignored.
        m = unsafe { _mm256_max_ps(_mm256_loadu_ps(x.as_ptr().add(i)), m) };
        i += 8;
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: eight writable floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    super::scalar::max(&lanes).max(super::scalar::max(&x[i..]))
}

#[inline]
#[target_feature(enable = "avx2")]
fn horizontal_sum(v: __m256) -> f32 {
    let mut lanes = [0.0f32; 8];
    // SAFETY: eight writable floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

/// How the rows of a block are read (one register per eight columns) and copied.
trait RowFormat: Copy {
    /// Elements per register-sized group (8 lanes).
    unsafe fn load8(ptr: *const Self) -> (__m256, __m256i);
    unsafe fn store8(ptr: *mut Self, raw: __m256i, stream: bool);
    fn scalar(self) -> f32;
}

impl RowFormat for f32 {
    #[inline(always)]
    unsafe fn load8(ptr: *const f32) -> (__m256, __m256i) {
        // SAFETY: the caller guarantees eight readable floats.
        let v = unsafe { _mm256_loadu_ps(ptr) };
        (v, _mm256_castps_si256(v))
    }
    #[inline(always)]
    unsafe fn store8(ptr: *mut f32, raw: __m256i, stream: bool) {
        // SAFETY: eight writable floats; 32-byte aligned when `stream` (checked by the caller).
        unsafe {
            if stream {
                _mm256_stream_ps(ptr, _mm256_castsi256_ps(raw))
            } else {
                _mm256_storeu_ps(ptr, _mm256_castsi256_ps(raw))
            }
        }
    }
    fn scalar(self) -> f32 {
        self
    }
}

impl RowFormat for f16 {
    #[inline(always)]
    unsafe fn load8(ptr: *const f16) -> (__m256, __m256i) {
        // SAFETY: the caller guarantees eight readable halves (16 bytes).
        let h = unsafe { _mm_loadu_si128(ptr as *const __m128i) };
        (_mm256_cvtph_ps(h), _mm256_castsi128_si256(h))
    }
    #[inline(always)]
    unsafe fn store8(ptr: *mut f16, raw: __m256i, stream: bool) {
        let h = _mm256_castsi256_si128(raw);
        // SAFETY: sixteen writable bytes; 16-byte aligned when `stream` (checked by the caller).
        unsafe {
            if stream {
                _mm_stream_si128(ptr as *mut __m128i, h)
            } else {
                _mm_storeu_si128(ptr as *mut __m128i, h)
            }
        }
    }
    fn scalar(self) -> f32 {
        self.to_f32()
    }
}

/// One column strip of `8·W` columns over all rows, accumulator in `W` registers.
///
/// # Safety
/// `acc` holds `8·W` floats; `rows` (and `copy`, when not null) hold `probs.len()` rows of
/// `stride` elements with at least `8·W` from the strip start; AVX2, FMA and F16C are available.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn strip<V: RowFormat, const W: usize>(
    acc: *mut f32,
    probs: &[f32],
    rows: *const V,
    copy: *mut V,
    stride: usize,
    stream: bool,
) {
    // SAFETY: all pointer arithmetic stays inside the ranges the caller guarantees.
    unsafe {
        let mut a: [__m256; W] = std::array::from_fn(|v| _mm256_loadu_ps(acc.add(8 * v)));
        // Each register-wide piece is loaded, copied and added before the next is loaded: W
        // accumulators plus a couple of temporaries fit the 16 registers (holding a whole row
        // too would spill an accumulator to the stack on every row).
        for (t, &p) in probs.iter().enumerate() {
            let row = rows.add(t * stride);
            let pv = _mm256_set1_ps(p);
            if copy.is_null() {
                if p != 0.0 {
                    for (v, av) in a.iter_mut().enumerate() {
                        *av = _mm256_fmadd_ps(pv, V::load8(row.add(8 * v)).0, *av);
                    }
                }
            } else {
                let dst = copy.add(t * stride);
                for (v, av) in a.iter_mut().enumerate() {
                    let (xv, raw) = V::load8(row.add(8 * v));
                    V::store8(dst.add(8 * v), raw, stream);
                    if p != 0.0 {
                        *av = _mm256_fmadd_ps(pv, xv, *av);
                    }
                }
            }
        }
        for (v, &av) in a.iter().enumerate() {
            _mm256_storeu_ps(acc.add(8 * v), av);
        }
    }
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_rows<V: RowFormat>(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[V],
    mut copy_to: Option<&mut [V]>,
    stream: bool,
) {
    let d = acc.len();
    assert_eq!(rows.len(), probs.len() * d, "value rows and probabilities");
    if let Some(dst) = &copy_to {
        assert_eq!(dst.len(), rows.len(), "copy destination");
    }
    let copy = copy_to
        .as_deref_mut()
        .map_or(std::ptr::null_mut(), <[V]>::as_mut_ptr);
    // Streaming stores need every row start aligned to the store width.
    let width = 8 * std::mem::size_of::<V>();
    let stream = stream
        && !copy.is_null()
        && (copy as usize).is_multiple_of(width)
        && (d * std::mem::size_of::<V>()).is_multiple_of(width);
    let tail = super::for_each_strip(d, |c, groups| {
        let acc = acc.as_mut_ptr().wrapping_add(c);
        let (rows, copy) = (rows.as_ptr().wrapping_add(c), super::offset(copy, c));
        // SAFETY: the strip covers columns c..c + 8·groups <= d of every row; CPU features as
        // required by this function.
        unsafe {
            match groups {
                8 => strip::<V, 8>(acc, probs, rows, copy, d, stream),
                4 => strip::<V, 4>(acc, probs, rows, copy, d, stream),
                2 => strip::<V, 2>(acc, probs, rows, copy, d, stream),
                _ => strip::<V, 1>(acc, probs, rows, copy, d, stream),
            }
        }
    });
    if stream {
        // Streaming stores are weakly ordered: fence them before the pool reports completion.
        _mm_sfence();
    }
    super::scalar::accumulate_columns(acc, probs, rows, copy_to, tail, V::scalar);
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate_rows_f32(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f32],
    copy_to: Option<&mut [f32]>,
    stream: bool,
) {
    // SAFETY: same requirements.
    unsafe { accumulate_rows(acc, probs, rows, copy_to, stream) }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate_rows_f16(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f16],
    copy_to: Option<&mut [f16]>,
    stream: bool,
) {
    // SAFETY: same requirements.
    unsafe { accumulate_rows(acc, probs, rows, copy_to, stream) }
}
