use half::f16;

/// Element type of the value cache: float32 or float16 (stored as IEEE half).
pub trait ValueElem: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// `acc += p · row`, the innermost loop of value aggregation.
    fn accumulate(acc: &mut [f32], p: f32, row: &[Self]);
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
    fn accumulate(acc: &mut [f32], p: f32, row: &[Self]) {
        super::simd::axpy_f32(acc, p, row)
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
    fn accumulate(acc: &mut [f32], p: f32, row: &[Self]) {
        super::simd::axpy_f16(acc, p, row)
    }
}
