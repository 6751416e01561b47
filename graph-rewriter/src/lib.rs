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

/// One entry point for fuzzers and their corpus replay: arbitrary bytes as a model, rewritten
/// with a subspace count taken from the first byte. Must end in `Ok` or `Err`, never panic.
pub fn fuzz_rewrite(data: &[u8]) -> bool {
    use onnx_protobuf::Message;
    let Some((&first, rest)) = data.split_first() else {
        return false;
    };
    let Ok(mut model) = onnx_protobuf::ModelProto::parse_from_bytes(rest) else {
        return false;
    };
    let opts = Options {
        subspaces: 1 << (first % 7),
        centroids: 1 + (first as usize * 7) % 256,
        value_dtype: ValueDtype::F32,
    };
    let ok = rewrite(&mut model, &opts).is_ok();
    ok && model.write_to_bytes().is_ok()
}
