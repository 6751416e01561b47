//! Pure kernels of LookatAttention. Nothing here knows about ONNX Runtime.

mod adc;
mod attention;
mod codebook;
pub mod fuzz;
mod geometry;
pub mod simd;
mod softmax;
mod transform;
mod value;

pub use adc::{adc_scores, adc_scores_group};
pub use attention::{
    lookat_attention, prefill_uses_products, AttentionInputs, AttentionOptions, AttentionOutputs,
};
pub use codebook::{argmin, PreparedCodebook, PreparedCodebooks, ENCODE_TIE_BOUND};
pub use geometry::{Geometry, Layout, LookatError, ShapeInputs};
pub use softmax::OnlineSoftmax;
pub use transform::KeyTransforms;
pub use value::ValueElem;

/// Runs `tasks` independent pieces of work, possibly on several threads.
///
/// The op runs on ONNX Runtime's intra-op pool through this trait; tests use [`Serial`].
pub trait ParallelFor: Sync {
    fn run(&self, tasks: usize, work: &(dyn Fn(usize) + Sync));

    /// Threads that may run tasks at once; the kernels split work finer when it is larger than
    /// the natural task count.
    fn parallelism(&self) -> usize {
        1
    }
}

/// Runs every task on the calling thread, in order.
pub struct Serial;

impl ParallelFor for Serial {
    fn run(&self, tasks: usize, work: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(work);
    }
}
