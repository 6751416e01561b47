//! `lookat-rewrite`: finds the attention blocks of exported ONNX models and replaces each with
//! `com.lookat::LookatAttention`, turning the key cache I/O into uint8 codes.
//!
//! - [`block`]: the boundary of an attention block and the matching pieces all exporters share.
//! - [`scores`]: the scores → softmax → values path of the Softmax-anchored patterns.
//! - [`patterns`]: one matcher per exporter attention pattern, each bailing early with a reason;
//!   the ops refused by name; finding every block of a graph.
//! - [`rewrite`]: planning each block's patch, applying it, the report.
//! - [`cli`]: exit statuses and argument parsing shared by the tools.
//!
//! ONNX utilities (graph index, atomic I/O, dead-node removal, sorting, the consistency check)
//! live in `lookat-onnx`; the op's names and I/O positions in `lookat-contract`.

pub mod block;
pub mod cli;
pub mod patterns;
pub mod rewrite;
pub mod scores;

pub use lookat_onnx::io;
pub use patterns::find_blocks;
pub use rewrite::{plan_block, rewrite, CacheIoChange, Options, Refusal, Report, ValueDtype};

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
        sinks: (first % 3) as usize,
        window: [0, 1, 16][(first as usize / 3) % 3],
        transforms: first % 5 == 0,
        shared_cache: first % 4 == 1,
    };
    let ok = rewrite(&mut model, &opts).is_ok();
    ok && model.write_to_bytes().is_ok()
}
