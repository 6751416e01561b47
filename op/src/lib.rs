//! LookatAttention: attention over a product-quantized key cache (LOOKAT, arXiv 2601.10155).
//!
//! - [`kernels`]: pure Rust, no FFI. Encoding, lookup tables, ADC scoring, masked softmax and
//!   value aggregation, and the driver that runs one call of the op. Tests and benchmarks use it
//!   directly.
//! - `ort_glue` (private): the ONNX Runtime custom-op plugin. The cdylib exports exactly one
//!   symbol, `RegisterCustomOps`.
//!
//! The operator contract lives in `docs/op-spec.md`.

pub mod kernels;
mod ort_glue;

pub use kernels::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, Geometry, LookatError,
    ParallelFor, Serial, ValueElem,
};

/// Operator domain, name and opset version, as written into rewritten models.
pub const DOMAIN: &str = "com.lookat";
pub const OP_NAME: &str = "LookatAttention";
pub const OPSET_VERSION: i64 = 1;
