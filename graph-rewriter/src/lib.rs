//! `lookat-rewrite`: finds the attention blocks of exported GPT-2 ONNX models and replaces each
//! with `com.lookat::LookatAttention`, turning the key cache I/O into uint8 codes.
//!
//! - [`graph`]: a read-only index (producers, consumers, constants).
//! - [`block`]: the boundary of an attention block and the matching pieces all exporters share.
//! - [`patterns`]: one matcher per exporter attention pattern, each bailing early with a reason.
//! - [`rewrite`]: applying blocks, dead-node removal, sorting, consistency checks.
//! - [`io`]: atomic writes, external data.

pub mod block;
pub mod graph;
pub mod io;
pub mod patterns;
pub mod rewrite;

pub use rewrite::{
    codebooks_name, codes_name, find_blocks, prune_to_outputs, rewrite, Options, Refusal, Report,
    ValueDtype,
};
