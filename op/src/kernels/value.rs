use half::{f16, slice::HalfFloatSliceExt};

/// Element type of the value cache: float32, float16 (stored as IEEE half), or int8 rows with a
/// scale per row (token and head: KIVI's per-token choice for values).
///
/// A cache row holds `D + ROW_EXTRA` elements: the D values, then (int8 only) the row's scale as
/// the four little-endian bytes of a float32; value `c` of an int8 row is `scale · q[c]`.
pub trait ValueElem: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    /// Elements after the D values of each cache row.
    const ROW_EXTRA: usize = 0;
    /// Element type of the full-precision key window kept beside a cache of this type.
    type Window: ValueElem;
    /// The element as a float (for int8: the quantized integer, without the row's scale).
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// Stores D floats as one cache row (`dst.len() = D + ROW_EXTRA`).
    fn store_row(src: &[f32], dst: &mut [Self]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(x);
        }
    }
    /// The D values a cache row stands for (`out.len() = D`).
    fn load_row(row: &[Self], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = x.to_f32();
        }
    }
    /// `acc[q] += Σ_t weights[q][t] · value(row t)` for a group of queries, optionally copying
    /// the rows; see [`super::simd::accumulate_rows_f32`].
    fn accumulate_rows(
        acc: &mut [&mut [f32]],
        weights: &[&[f32]],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        stream: bool,
    );
}

impl ValueElem for f32 {
    const NAME: &'static str = "float32";
    type Window = f32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn accumulate_rows(
        acc: &mut [&mut [f32]],
        weights: &[&[f32]],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        stream: bool,
    ) {
        super::simd::accumulate_rows_f32(acc, weights, rows, copy_to, stream)
    }
}

impl ValueElem for f16 {
    const NAME: &'static str = "float16";
    type Window = f16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    /// `half`'s slice conversions: F16C (x86_64) or FP16 (aarch64) instructions when the CPU has
    /// them, rounding as [`f16::from_f32`] does.
    fn store_row(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src)
    }
    fn load_row(row: &[Self], out: &mut [f32]) {
        row.convert_to_f32_slice(out)
    }
    #[inline(always)]
    fn accumulate_rows(
        acc: &mut [&mut [f32]],
        weights: &[&[f32]],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        stream: bool,
    ) {
        super::simd::accumulate_rows_f16(acc, weights, rows, copy_to, stream)
    }
}

/// Stores D floats as one int8 row (see [`ValueElem::store_row`] for i8); compiled by the SIMD
/// entry points with their target features, where the compiler vectorizes it.
#[inline(always)]
pub(crate) fn quantize_int8_row(src: &[f32], dst: &mut [i8]) {
    let d = src.len();
    // |x| as bits: ordered as the magnitudes, and at least those of +inf for a non-finite x,
    // so one integer maximum (vectorized) gives the absmax and the finiteness check.
    let max_bits = src
        .iter()
        .fold(0u32, |m, &x| m.max(x.to_bits() & 0x7fff_ffff));
    let amax = if max_bits < f32::INFINITY.to_bits() {
        f32::from_bits(max_bits)
    } else {
        f32::NAN
    };
    let scale = amax / 127.0;
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &x) in dst[..d].iter_mut().zip(src) {
        *q = round_to_i8(x * inv);
    }
    for (q, b) in dst[d..d + 4].iter_mut().zip(scale.to_le_bytes()) {
        *q = b as i8;
    }
}

/// `x.round().clamp(-127.0, 127.0) as i8` (halves away from zero; NaN to 0) without a libm call:
/// the truncation and the remainder `x − trunc(x)` are exact for |x| < 2³¹, and a remainder of
/// at least one half rounds away from zero.
#[inline(always)]
fn round_to_i8(x: f32) -> i8 {
    // NaN to 0, anything else within ±128 (which rounds and clamps as before): the casts below
    // are then in range, and unchecked casts vectorize where saturating ones do not.
    let x = if x.is_nan() {
        0.0
    } else {
        x.clamp(-128.0, 128.0)
    };
    // SAFETY: x is finite and |x| <= 128.
    let t = unsafe { x.to_int_unchecked::<i32>() } as f32;
    let rounded = if (x - t).abs() >= 0.5 {
        t + 1.0f32.copysign(x)
    } else {
        t
    };
    // SAFETY: the clamped value is an integer in [-127, 127].
    unsafe { rounded.clamp(-127.0, 127.0).to_int_unchecked::<i32>() as i8 }
}

/// The scale stored at the end of an int8 row.
#[inline(always)]
pub fn int8_row_scale(row: &[i8]) -> f32 {
    let n = row.len();
    f32::from_le_bytes([row[n - 4], row[n - 3], row[n - 2], row[n - 1]].map(|b| b as u8))
}

impl ValueElem for i8 {
    const NAME: &'static str = "int8";
    const ROW_EXTRA: usize = 4;
    type Window = f16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x.round().clamp(-127.0, 127.0) as i8
    }
    /// Symmetric absmax quantization: `scale = max|x| / 127`, `q = round(x / scale)`; a zero row
    /// has scale 0. A non-finite value makes the scale non-finite (the row reads back as NaN, as
    /// a float cache would carry it).
    fn store_row(src: &[f32], dst: &mut [Self]) {
        super::simd::quantize_int8_row(src, dst)
    }
    fn load_row(row: &[Self], out: &mut [f32]) {
        let scale = int8_row_scale(row);
        for (o, &q) in out.iter_mut().zip(row) {
            *o = scale * q as f32;
        }
    }
    #[inline(always)]
    fn accumulate_rows(
        acc: &mut [&mut [f32]],
        weights: &[&[f32]],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        _stream: bool,
    ) {
        super::simd::accumulate_rows_int8(acc, weights, rows, copy_to)
    }
}

#[cfg(test)]
mod tests {
    use super::round_to_i8;

    /// The libm-free rounding against `round()` (halves away from zero) then clamp: halves, the
    /// floats just below and above them, the clamp, zeros, NaN and infinities.
    #[test]
    fn int8_rounding_matches_round_then_clamp() {
        let mut xs = vec![
            0.0f32,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
        ];
        for k in -300..=300 {
            let half = k as f32 * 0.5;
            xs.extend([half, half.next_down(), half.next_up()]);
        }
        xs.extend((0..10_000).map(|i| (i as f32 * 0.0271).sin() * 130.0));
        for x in xs {
            let want = x.round().clamp(-127.0, 127.0) as i8;
            assert_eq!(round_to_i8(x), want, "x = {x:e}");
        }
    }
}
