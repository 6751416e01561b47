use half::f16;

/// Element type of the value cache: float32 or float16 (stored as IEEE half).
pub trait ValueElem: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// `acc += Σ_t probs[t] · rows[t]`, optionally copying the rows; see
    /// [`super::simd::accumulate_rows_f32`].
    fn accumulate_rows(
        acc: &mut [f32],
        probs: &[f32],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        stream: bool,
    );
}

impl ValueElem for f32 {
    const NAME: &'static str = "float32";
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
        acc: &mut [f32],
        probs: &[f32],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        stream: bool,
    ) {
        super::simd::accumulate_rows_f32(acc, probs, rows, copy_to, stream)
    }
}

impl ValueElem for f16 {
    const NAME: &'static str = "float16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn accumulate_rows(
        acc: &mut [f32],
        probs: &[f32],
        rows: &[Self],
        copy_to: Option<&mut [Self]>,
        stream: bool,
    ) {
        super::simd::accumulate_rows_f16(acc, probs, rows, copy_to, stream)
    }
}
