//! LookatAttention: attention over a product-quantized key cache (LOOKAT, arXiv 2601.10155).
//!
//! - [`kernels`]: pure Rust, no FFI. Encoding, lookup tables, ADC scoring, masked softmax and
//!   value aggregation, and the driver that runs one call of the op. Tests and benchmarks use it
//!   directly.
//! - `ort_glue` (private): the ONNX Runtime custom-op plugin. The cdylib exports exactly one
//!   symbol, `RegisterCustomOps`.
//!
//! The operator's names, I/O positions and codebook layout come from `lookat-contract`
//! (re-exported as [`contract`]); its semantics are in `docs/op-spec.md`.

pub mod kernels;
mod ort_glue;

pub use kernels::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, Geometry, Layout,
    LookatError, ParallelFor, Serial, ValueElem,
};
pub use lookat_contract as contract;
