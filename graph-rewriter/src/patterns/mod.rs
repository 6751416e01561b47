//! One matcher per attention pattern that GPT-2 exporters produce (see
//! `../shared/notes/gpt2-exports.md`). Each takes one anchor node and returns the block it
//! recognises or, early, the reason it does not.
//!
//! | pattern | exporters | scores |
//! |---|---|---|
//! | `scaled-scores` | TorchScript (eager, opset 14-20), dynamo eager (18, 23), optimum eager | `Softmax(mask(Mul|Div(MatMul(q, Kᵀ), c)))` |
//! | `sdpa-decomposed` | TorchScript sdpa, dynamo sdpa opset 18, optimum sdpa | `Softmax(mask(MatMul(Mul(q, √s), Mul(Kᵀ, √s))))`, NaN guard after |
//! | `onnx-attention` | dynamo sdpa opset 23 | one ONNX `Attention(q, K, V, mask)` node |
//! | `ort-multi-head-attention` | ORT-fused graphs | `com.microsoft.MultiHeadAttention(q, k, v, mask, past_key, past_value)`, unidirectional |

mod onnx_attention;
mod ort_fused;
mod scaled_scores;
mod sdpa_decomposed;
mod softmax;

use crate::block::{AttentionBlock, Miss};
use crate::graph::GraphIndex;

pub type Matcher = fn(&GraphIndex<'_>, usize) -> Result<AttentionBlock, Miss>;

/// (name, anchor domain, anchor op type, matcher), tried in order on every anchor node.
pub const PATTERNS: [(&str, &str, &str, Matcher); 5] = [
    ("scaled-scores", "", "Softmax", scaled_scores::match_at),
    ("sdpa-decomposed", "", "Softmax", sdpa_decomposed::match_at),
    ("onnx-attention", "", "Attention", onnx_attention::match_at),
    (
        "ort-multi-head-attention",
        "com.microsoft",
        "MultiHeadAttention",
        ort_fused::match_multi_head_attention,
    ),
    (
        "ort-attention",
        "com.microsoft",
        "Attention",
        ort_fused::match_attention,
    ),
];

/// Whether `node` is an anchor of a pattern with this domain and op type.
pub fn is_anchor(node: &onnx_protobuf::NodeProto, domain: &str, op: &str) -> bool {
    node.op_type == op && (node.domain == domain || (domain.is_empty() && node.domain == "ai.onnx"))
}
