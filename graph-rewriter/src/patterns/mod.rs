//! One matcher per attention pattern that exporters produce (see `models/README.md` for the graphs
//! each exporter emits). Each takes one anchor node and returns the block it recognises or, early,
//! the reason it does not.
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

use onnx_protobuf::{GraphProto, NodeProto};

use crate::block::{AttentionBlock, Miss};
use lookat_onnx::graph::{is_op, GraphIndex};

pub type Matcher = fn(&GraphIndex<'_>, usize) -> Result<AttentionBlock, Miss>;

/// An attention pattern: the node it is anchored on and its matcher.
pub struct Pattern {
    pub name: &'static str,
    /// Domain of the anchor node ("" is the default ONNX domain).
    pub domain: &'static str,
    pub op_type: &'static str,
    pub matcher: Matcher,
}

impl Pattern {
    /// `Softmax`, `com.microsoft::MultiHeadAttention`.
    pub fn anchor(&self) -> String {
        if self.domain.is_empty() {
            self.op_type.to_string()
        } else {
            format!("{}::{}", self.domain, self.op_type)
        }
    }

    pub fn anchors_on(&self, node: &NodeProto) -> bool {
        is_anchor(node, self.domain, self.op_type)
    }
}

/// Tried in order on every node.
pub const PATTERNS: [Pattern; 4] = [
    Pattern {
        name: "scaled-scores",
        domain: "",
        op_type: "Softmax",
        matcher: scaled_scores::match_at,
    },
    Pattern {
        name: "sdpa-decomposed",
        domain: "",
        op_type: "Softmax",
        matcher: sdpa_decomposed::match_at,
    },
    Pattern {
        name: "onnx-attention",
        domain: "",
        op_type: "Attention",
        matcher: onnx_attention::match_at,
    },
    Pattern {
        name: "ort-multi-head-attention",
        domain: "com.microsoft",
        op_type: "MultiHeadAttention",
        matcher: ort_fused::match_multi_head_attention,
    },
];

/// Attention ops recognised by name and refused, with the reason given to the user.
pub struct Unsupported {
    pub domain: &'static str,
    pub op_type: &'static str,
    pub why: &'static str,
}

pub const UNSUPPORTED: [Unsupported; 1] = [Unsupported {
    domain: "com.microsoft",
    op_type: "Attention",
    why: "fused QKV weights with a stacked [2,B,H,P,D] past are not supported yet; export with \
          optimum/torch instead, or fuse to MultiHeadAttention",
}];

/// Whether `node` is of this domain and op type.
pub fn is_anchor(node: &NodeProto, domain: &str, op: &str) -> bool {
    node.op_type == op && (node.domain == domain || (domain.is_empty() && node.domain == "ai.onnx"))
}

/// Inputs (at least) that the matchers read from each op type they look at, by position.
const MIN_INPUTS: [(&str, usize); 17] = [
    ("Softmax", 1),
    ("MatMul", 2),
    ("Mul", 2),
    ("Div", 2),
    ("Add", 2),
    ("Where", 3),
    ("Transpose", 1),
    ("Reshape", 2),
    ("Concat", 1),
    ("Split", 1),
    ("Cast", 1),
    ("Gemm", 2),
    ("Shape", 1),
    ("Gather", 2),
    ("Slice", 1),
    ("IsNaN", 1),
    ("Attention", 3),
];

/// The first node that has fewer inputs than its op needs, or no output: such a model is
/// malformed, and refusing it up front keeps every matcher free of bounds checks.
pub fn malformed_node(graph: &GraphProto) -> Option<String> {
    graph.node.iter().find_map(|n| {
        if n.output.is_empty() || n.output[0].is_empty() {
            return Some(format!("node {} '{}' has no output", n.op_type, n.name));
        }
        let need = MIN_INPUTS
            .iter()
            .find(|(op, _)| is_op(n, op))
            .map(|(_, k)| *k)
            .or_else(|| {
                (n.domain == "com.microsoft" && n.op_type == "MultiHeadAttention").then_some(1)
            })?;
        (n.input.len() < need).then(|| {
            format!(
                "node {} '{}' has {} input(s), the op needs at least {need}",
                n.op_type,
                n.name,
                n.input.len()
            )
        })
    })
}

/// Runs every matcher on every anchor node. Returns the blocks and, for `--explain` and the
/// refusal message, one line per failed (pattern, anchor) pair and per unsupported attention op.
pub fn find_blocks(graph: &GraphProto) -> (Vec<AttentionBlock>, Vec<Miss>) {
    if let Some(why) = malformed_node(graph) {
        return (vec![], vec![format!("malformed model: {why}")]);
    }
    let g = GraphIndex::new(graph);
    let mut blocks = vec![];
    let mut misses = vec![];
    for (i, node) in graph.node.iter().enumerate() {
        if let Some(u) = UNSUPPORTED
            .iter()
            .find(|u| is_anchor(node, u.domain, u.op_type))
        {
            misses.push(format!(
                "{}::{} '{}': {}",
                u.domain, u.op_type, node.name, u.why
            ));
            continue;
        }
        let mut attempts = vec![];
        for p in PATTERNS.iter().filter(|p| p.anchors_on(node)) {
            match (p.matcher)(&g, i) {
                Ok(b) => {
                    blocks.push(b);
                    attempts.clear();
                    break;
                }
                Err(why) => attempts.push(format!(
                    "{} at {} '{}': {why}",
                    p.name, p.op_type, node.name
                )),
            }
        }
        misses.extend(attempts);
    }
    (blocks, misses)
}
