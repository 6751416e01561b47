//! The contract of `com.lookat::LookatAttention` in one place: domain, op name and opset, the
//! input/output table, the attributes, how rewritten models name their tensors, where a centroid
//! lies in a codebooks tensor, and how many bytes a token costs in the cache.
//!
//! The plugin (`op/`), the rewriter, calibrate and the Rust tests read these facts from here; the
//! Python side reads the same facts from `contract/contract.json`, which `cargo run -p
//! lookat-contract` writes from this file (a test fails when the two disagree).
//! `docs/op-spec.md` explains the semantics.

#![forbid(unsafe_code)]

use std::ops::Range;

pub const DOMAIN: &str = "com.lookat";
pub const OP_NAME: &str = "LookatAttention";
pub const OPSET_VERSION: i64 = 1;
/// Lowest ONNX Runtime C API version the plugin declares (`KernelContext_ParallelFor` appeared in
/// 17): onnxruntime 1.17 or newer.
pub const MIN_ORT_API_VERSION: u32 = 17;
/// Codes are bytes: at most 256 centroids per subspace.
pub const MAX_CENTROIDS: usize = 256;

/// The oldest onnxruntime release that provides [`MIN_ORT_API_VERSION`] (C API N ships in 1.N).
pub fn min_onnxruntime() -> String {
    format!("1.{MIN_ORT_API_VERSION}")
}

/// Element type of an input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Float32,
    Float16,
    Uint8,
    Int64,
    /// `T_V`, the node's value cache type: float32, float16 or int8 rows (one kernel each,
    /// [`ValueType`]).
    ValueCache,
    /// `T_W`, the key window's type: `T_V`, or float16 when `T_V` is int8.
    KeyWindow,
}

impl Elem {
    pub fn name(self) -> &'static str {
        match self {
            Elem::Float32 => "float32",
            Elem::Float16 => "float16",
            Elem::Uint8 => "uint8",
            Elem::Int64 => "int64",
            Elem::ValueCache => "T_V",
            Elem::KeyWindow => "T_W",
        }
    }
}

/// The value cache type `T_V` of a node, what a cache row of it holds, and its key window's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    Float32,
    Float16,
    /// Int8 rows: the D values quantized with one scale per row (token and kv head, symmetric,
    /// `scale = max|v| / 127`), then the scale as the four little-endian bytes of a float32.
    Int8,
}

impl ValueType {
    pub const ALL: [ValueType; 3] = [ValueType::Float32, ValueType::Float16, ValueType::Int8];

    /// The ONNX element type's name.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Float32 => "float32",
            ValueType::Float16 => "float16",
            ValueType::Int8 => "int8",
        }
    }

    pub fn elem_bytes(self) -> usize {
        match self {
            ValueType::Float32 => 4,
            ValueType::Float16 => 2,
            ValueType::Int8 => 1,
        }
    }

    /// Elements after the D values of each cache row (the int8 row's scale).
    pub fn row_extra(self) -> usize {
        match self {
            ValueType::Int8 => 4,
            _ => 0,
        }
    }

    /// Last dimension of the value cache tensors for head size `head_dim`.
    pub fn row_len(self, head_dim: usize) -> usize {
        head_dim + self.row_extra()
    }

    /// Bytes of one cache row (one token and kv head).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        self.elem_bytes() * self.row_len(head_dim)
    }

    /// The key window's element type: the value type, float16 for int8 rows.
    pub fn window(self) -> ValueType {
        match self {
            ValueType::Int8 => ValueType::Float16,
            other => other,
        }
    }
}

/// One input or output of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub name: &'static str,
    pub elem: Elem,
    pub optional: bool,
    pub shape: &'static str,
}

const fn port(name: &'static str, elem: Elem, optional: bool, shape: &'static str) -> Port {
    Port {
        name,
        elem,
        optional,
        shape,
    }
}

/// Inputs, by position.
pub mod input {
    use super::{port, Elem::*, Port};

    pub const QUERY: usize = 0;
    pub const KEY: usize = 1;
    pub const VALUE: usize = 2;
    /// Optional together with [`PAST_VALUE`]: both absent is an empty cache.
    pub const PAST_KEY_CODES: usize = 3;
    pub const PAST_VALUE: usize = 4;
    pub const ATTENTION_MASK: usize = 5;
    pub const CODEBOOKS: usize = 6;
    /// Full-precision keys of the sink and most recent tokens (with `sinks`/`window` > 0).
    pub const PAST_KEY_WINDOW: usize = 7;
    /// `A` per kv head: keys are encoded as `k·A` (optional, with [`QUERY_TRANSFORM`]).
    pub const KEY_TRANSFORM: usize = 8;
    /// `B` per kv head: tables are built from `q·B`; `B·Aᵀ = I`, so `(q·B)·(k·A) = q·k`.
    pub const QUERY_TRANSFORM: usize = 9;
    /// P, the valid tokens of a shared (max-length) cache buffer. Given: past and present cache
    /// tensors are `[B, H_kv, C, ·]` capacity buffers, and a present bound to the past's memory
    /// (IOBinding) is updated in place, without copying the past.
    pub const PAST_SEQUENCE_LENGTH: usize = 10;
    pub const COUNT: usize = 11;

    pub const PORTS: [Port; COUNT] = [
        port("query", Float32, false, "[B, S, H*D] or [B, H, S, D]"),
        port("key", Float32, false, "[B, S, H_kv*D] or [B, H_kv, S, D]"),
        port("value", Float32, false, "[B, S, H_kv*D] or [B, H_kv, S, D]"),
        port("past_key_codes", Uint8, true, "[B, H_kv, P, m]"),
        port(
            "past_value",
            ValueCache,
            true,
            "[B, H_kv, P, D] (D + 4 for int8 rows)",
        ),
        port("attention_mask", Int64, true, "[B, P+S]"),
        port("codebooks", Float32, false, "[H_kv, m, K, D/m]"),
        port(
            "past_key_window",
            KeyWindow,
            true,
            "[B, H_kv, min(P, sinks+window), D]",
        ),
        port("key_transform", Float32, true, "[H_kv, D, D]"),
        port("query_transform", Float32, true, "[H_kv, D, D]"),
        port("past_sequence_length", Int64, true, "[] or [1]"),
    ];

    pub fn name(index: usize) -> &'static str {
        PORTS[index].name
    }
}

/// Outputs, by position.
pub mod output {
    use super::{port, Elem::*, Port};

    pub const OUTPUT: usize = 0;
    pub const PRESENT_KEY_CODES: usize = 1;
    pub const PRESENT_VALUE: usize = 2;
    /// Pairs with [`super::input::PAST_KEY_WINDOW`]; produced when `sinks`/`window` > 0.
    pub const PRESENT_KEY_WINDOW: usize = 3;
    pub const COUNT: usize = 4;

    pub const PORTS: [Port; COUNT] = [
        port("output", Float32, false, "[B, S, H*D]"),
        port("present_key_codes", Uint8, false, "[B, H_kv, P+S, m]"),
        port(
            "present_value",
            ValueCache,
            false,
            "[B, H_kv, P+S, D] (D + 4 for int8 rows)",
        ),
        port(
            "present_key_window",
            KeyWindow,
            true,
            "[B, H_kv, min(P+S, sinks+window), D]",
        ),
    ];

    pub fn name(index: usize) -> &'static str {
        PORTS[index].name
    }
}

/// Attributes of the node.
pub mod attr {
    pub const NUM_HEADS: &str = "num_heads";
    pub const NUM_KV_HEADS: &str = "num_kv_heads";
    pub const SCALE: &str = "scale";
    pub const EXACT_CURRENT: &str = "exact_current";
    pub const SINKS: &str = "sinks";
    pub const WINDOW: &str = "window";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Attribute {
        pub name: &'static str,
        /// "int" or "float".
        pub kind: &'static str,
        /// `None`: required.
        pub default: Option<&'static str>,
        pub meaning: &'static str,
    }

    pub const ALL: [Attribute; 6] = [
        Attribute {
            name: NUM_HEADS,
            kind: "int",
            default: None,
            meaning: "H, query heads",
        },
        Attribute {
            name: NUM_KV_HEADS,
            kind: "int",
            default: Some("num_heads"),
            meaning: "H_kv, key/value heads (grouped-query attention); divides num_heads",
        },
        Attribute {
            name: SCALE,
            kind: "float",
            default: Some("1/sqrt(D)"),
            meaning: "softmax scale; finite and > 0",
        },
        Attribute {
            name: EXACT_CURRENT,
            kind: "int",
            default: Some("0"),
            meaning: "1: score this call's own keys exactly instead of through their codes",
        },
        Attribute {
            name: SINKS,
            kind: "int",
            default: Some("0"),
            meaning: "the first `sinks` tokens are kept in full precision and scored exactly",
        },
        Attribute {
            name: WINDOW,
            kind: "int",
            default: Some("0"),
            meaning:
                "each query scores its `window` most recent tokens exactly (kept in full precision)",
        },
    ];
}

/// The full-precision key window (`sinks` > 0 or `window` > 0): for a cache of `n` tokens it holds
/// the keys of tokens `[0, min(n, sinks))` then `[max(sinks, n - window), n)`, in that order.
pub mod window {
    /// Rows of the window of a cache of `n` tokens.
    pub fn rows(n: usize, sinks: usize, window: usize) -> usize {
        n.min(sinks + window)
    }

    /// The token held by window row `r` of a cache of `n` tokens.
    pub fn token(r: usize, n: usize, sinks: usize, window: usize) -> usize {
        let kept = n.min(sinks);
        if r < kept {
            r
        } else {
            sinks.max(n.saturating_sub(window)) + (r - kept)
        }
    }

    /// The window row holding token `t` of a cache of `n` tokens, if any.
    pub fn row(t: usize, n: usize, sinks: usize, window: usize) -> Option<usize> {
        let kept = n.min(sinks);
        let recent = sinks.max(n.saturating_sub(window));
        if t < kept {
            Some(t)
        } else if t >= recent && t < n {
            Some(kept + t - recent)
        } else {
            None
        }
    }

    /// Whether a query at position `p` scores token `t <= p` exactly: a sink, or one of its
    /// `window` most recent tokens (itself included).
    pub fn exact(t: usize, p: usize, sinks: usize, window: usize) -> bool {
        t < sinks || p - t < window
    }
}

/// How rewritten models name the tensors the rewrite adds.
pub mod naming {
    /// Suffix of a key-code cache tensor: `past_key_values.0.key` → `past_key_values.0.key_codes`.
    pub const CODES_SUFFIX: &str = "_codes";
    /// Suffix of a key-window cache tensor: `past_key_values.0.key` → `past_key_values.0.key_window`.
    pub const WINDOW_SUFFIX: &str = "_window";
    /// Prefix of the codebooks initializer of layer N: `lookat.codebooks.N`.
    pub const CODEBOOKS_PREFIX: &str = "lookat.codebooks.";

    /// The code tensor that replaces a float key cache tensor.
    pub fn codes_name(key_tensor: &str) -> String {
        format!("{key_tensor}{CODES_SUFFIX}")
    }

    /// The full-precision key window tensor that accompanies a key cache tensor.
    pub fn window_name(key_tensor: &str) -> String {
        format!("{key_tensor}{WINDOW_SUFFIX}")
    }

    /// The key and query transform initializers of the `layer`-th LookatAttention node.
    pub fn transform_names(layer: usize) -> (String, String) {
        (
            format!("lookat.key_transform.{layer}"),
            format!("lookat.query_transform.{layer}"),
        )
    }

    /// The graph input a model rewritten for shared (max-length) cache buffers takes: P, the
    /// tokens already in the buffers (int64 scalar), fed to every node's input 10.
    pub const PAST_SEQUENCE_LENGTH: &str = "past_sequence_length";
    /// The symbolic length of shared cache buffers in a rewritten model's I/O.
    pub const MAX_SEQUENCE_LENGTH: &str = "max_sequence_length";

    /// The codebooks initializer of the `layer`-th LookatAttention node.
    pub fn codebooks_name(layer: usize) -> String {
        format!("{CODEBOOKS_PREFIX}{layer}")
    }
}

/// `metadata_props` keys that lookat-calibrate writes into a calibrated model.
pub mod metadata {
    pub const SUBSPACES: &str = "lookat.subspaces";
    pub const CENTROIDS: &str = "lookat.centroids";
    pub const SEED: &str = "lookat.seed";
    pub const TOKENS: &str = "lookat.tokens";
    pub const WINDOW: &str = "lookat.window";
    pub const ITERS: &str = "lookat.iters";
    pub const RESERVOIR: &str = "lookat.reservoir";
    pub const CORPUS_SHA256: &str = "lookat.corpus_sha256";
    pub const TOKENIZER: &str = "lookat.tokenizer";
    pub const TRANSFORM: &str = "lookat.transform";
    pub const TOOL_VERSION: &str = "lookat.tool_version";
}

/// The shape `[heads, subspaces, centroids, sub_dim]` of a codebooks tensor (`heads` are the kv
/// heads), and where each centroid lies in it (row-major: centroid `c` of subspace `j` of head `h`
/// is `sub_dim` floats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodebookShape {
    pub heads: usize,
    pub subspaces: usize,
    pub centroids: usize,
    pub sub_dim: usize,
}

impl CodebookShape {
    /// The codebooks of `heads` heads of size `head_dim` split into `subspaces`; `None` when the
    /// split is impossible (no subspace, or one that does not divide the head size).
    pub fn new(
        heads: usize,
        head_dim: usize,
        subspaces: usize,
        centroids: usize,
    ) -> Option<CodebookShape> {
        (subspaces > 0 && head_dim > 0 && head_dim.is_multiple_of(subspaces)).then(|| {
            CodebookShape {
                heads,
                subspaces,
                centroids,
                sub_dim: head_dim / subspaces,
            }
        })
    }

    /// From a `[H, m, K, d']` shape with non-negative dimensions.
    pub fn from_dims(dims: &[i64]) -> Option<CodebookShape> {
        let [h, m, k, s] = *dims else { return None };
        let u = |x: i64| usize::try_from(x).ok();
        Some(CodebookShape {
            heads: u(h)?,
            subspaces: u(m)?,
            centroids: u(k)?,
            sub_dim: u(s)?,
        })
    }

    pub fn dims(&self) -> [i64; 4] {
        [self.heads, self.subspaces, self.centroids, self.sub_dim].map(|d| d as i64)
    }

    pub fn head_dim(&self) -> usize {
        self.subspaces * self.sub_dim
    }

    /// Floats in one head's `[m, K, d']` block.
    pub fn head_len(&self) -> usize {
        self.subspaces * self.centroids * self.sub_dim
    }

    /// Floats in the whole tensor.
    pub fn len(&self) -> usize {
        self.heads * self.head_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the tensor (float32).
    pub fn bytes(&self) -> usize {
        4 * self.len()
    }

    /// Flat offset of centroid `c` of subspace `j` of head `h`.
    pub fn offset(&self, h: usize, j: usize, c: usize) -> usize {
        ((h * self.subspaces + j) * self.centroids + c) * self.sub_dim
    }

    /// The `[K, d']` block of subspace `j` of head `h`.
    pub fn subspace(&self, h: usize, j: usize) -> Range<usize> {
        let start = self.offset(h, j, 0);
        start..start + self.centroids * self.sub_dim
    }

    /// The `[m, K, d']` block of head `h`.
    pub fn head(&self, h: usize) -> Range<usize> {
        h * self.head_len()..(h + 1) * self.head_len()
    }

    /// `[head, subspace, centroid, dimension]` of a flat offset.
    pub fn position(&self, flat: usize) -> [usize; 4] {
        let (sub, k, m) = (
            self.sub_dim.max(1),
            self.centroids.max(1),
            self.subspaces.max(1),
        );
        let (rest, i) = (flat / sub, flat % sub);
        let (rest, c) = (rest / k, rest % k);
        [rest / m, rest % m, c, i]
    }
}

/// Bytes per token of one layer's cache, before (float32 keys and values) and after the rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBytes {
    /// Heads whose keys and values are cached.
    pub kv_heads: usize,
    pub head_dim: usize,
    pub subspaces: usize,
    pub centroids: usize,
    /// The rewritten value cache's type (its key window's type follows from it).
    pub value_type: ValueType,
    /// Tokens of the full-precision key window (`sinks + window`).
    pub window_tokens: usize,
}

impl CacheBytes {
    /// Float32 keys (or values) of the original model, per token.
    pub fn float_keys(&self) -> usize {
        4 * self.kv_heads * self.head_dim
    }

    /// Key codes per token.
    pub fn key_codes(&self) -> usize {
        self.kv_heads * self.subspaces
    }

    /// Values per token in the rewritten cache.
    pub fn values(&self) -> usize {
        self.kv_heads * self.value_type.row_bytes(self.head_dim)
    }

    /// The layer's float32 codebooks, paid once per model, not per token.
    pub fn codebooks(&self) -> usize {
        4 * self.kv_heads * self.centroids * self.head_dim
    }

    /// The key window of a full cache, paid once per sequence (not per token).
    pub fn key_window(&self) -> usize {
        self.value_type.window().elem_bytes() * self.kv_heads * self.head_dim * self.window_tokens
    }

    /// Key bytes per token at `tokens` tokens: codes, plus the codebooks and the key window
    /// amortised over the sequence.
    pub fn keys_amortised(&self, tokens: usize) -> f64 {
        self.keys_amortised_f64(tokens.max(1) as f64)
    }

    /// [`Self::keys_amortised`] for a real-valued length (`f64::INFINITY`: codes only).
    pub fn keys_amortised_f64(&self, tokens: f64) -> f64 {
        self.key_codes() as f64 + (self.codebooks() + self.key_window()) as f64 / tokens
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_ports(ports: &[Port]) -> String {
    let rows: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    {{\"index\": {i}, \"name\": {}, \"elem\": {}, \"optional\": {}, \"shape\": {}}}",
                json_str(p.name),
                json_str(p.elem.name()),
                p.optional,
                json_str(p.shape)
            )
        })
        .collect();
    format!("[\n{}\n  ]", rows.join(",\n"))
}

/// The contract as JSON: what `contract/contract.json` holds.
pub fn json() -> String {
    let attrs: Vec<String> = attr::ALL
        .iter()
        .map(|a| {
            format!(
                "    {{\"name\": {}, \"kind\": {}, \"default\": {}, \"meaning\": {}}}",
                json_str(a.name),
                json_str(a.kind),
                a.default.map_or("null".to_string(), json_str),
                json_str(a.meaning)
            )
        })
        .collect();
    let meta = [
        metadata::SUBSPACES,
        metadata::CENTROIDS,
        metadata::SEED,
        metadata::TOKENS,
        metadata::WINDOW,
        metadata::ITERS,
        metadata::RESERVOIR,
        metadata::CORPUS_SHA256,
        metadata::TOKENIZER,
        metadata::TRANSFORM,
        metadata::TOOL_VERSION,
    ]
    .map(json_str)
    .join(", ");
    format!(
        "{{\n  \"_generated_by\": \"cargo run -p lookat-contract (from contract/src/lib.rs); do not edit\",\n  \
         \"domain\": {},\n  \"op_name\": {},\n  \"opset_version\": {OPSET_VERSION},\n  \
         \"min_ort_api_version\": {MIN_ORT_API_VERSION},\n  \"min_onnxruntime\": {},\n  \
         \"max_centroids\": {MAX_CENTROIDS},\n  \"inputs\": {},\n  \"outputs\": {},\n  \
         \"attributes\": [\n{}\n  ],\n  \"codes_suffix\": {},\n  \"window_suffix\": {},\n  \"codebooks_prefix\": {},\n  \
         \"past_sequence_length_input\": {},\n  \"max_sequence_length_dim\": {},\n  \
         \"codebooks_layout\": \"[heads, subspaces, centroids, sub_dim], row-major\",\n  \
         \"key_window_rows\": \"tokens [0, min(n, sinks)) then [max(sinks, n - window), n) of a cache of n tokens\",\n  \
         \"cache_bytes_per_token\": {{\"key_codes\": \"kv_heads * subspaces\", \"values\": \"kv_heads * row_bytes (float32 4*D, float16 2*D, int8 D + 4)\", \"float_keys\": \"4 * kv_heads * head_dim\", \"codebooks_per_layer\": \"4 * kv_heads * centroids * head_dim\", \"key_window_per_sequence\": \"window_elem_bytes (4 float32, else 2) * kv_heads * head_dim * (sinks + window)\"}},\n  \
         \"metadata_keys\": [{meta}]\n}}\n",
        json_str(DOMAIN),
        json_str(OP_NAME),
        json_str(&min_onnxruntime()),
        json_ports(&input::PORTS),
        json_ports(&output::PORTS),
        attrs.join(",\n"),
        json_str(naming::CODES_SUFFIX),
        json_str(naming::WINDOW_SUFFIX),
        json_str(naming::CODEBOOKS_PREFIX),
        json_str(naming::PAST_SEQUENCE_LENGTH),
        json_str(naming::MAX_SEQUENCE_LENGTH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebook_offsets_and_positions_agree() {
        let s = CodebookShape::new(3, 12, 4, 5).expect("4 divides 12");
        assert_eq!((s.sub_dim, s.head_len(), s.len()), (3, 60, 180));
        let mut flat = 0;
        for h in 0..3 {
            assert_eq!(s.head(h).start, flat);
            for j in 0..4 {
                assert_eq!(s.subspace(h, j).start, flat);
                for c in 0..5 {
                    assert_eq!(s.offset(h, j, c), flat);
                    for i in 0..3 {
                        assert_eq!(s.position(flat + i), [h, j, c, i]);
                    }
                    flat += 3;
                }
            }
        }
        assert_eq!(flat, s.len());
        assert_eq!(CodebookShape::from_dims(&s.dims()), Some(s));
        assert!(CodebookShape::new(2, 12, 5, 256).is_none());
        assert!(CodebookShape::new(2, 12, 0, 256).is_none());
        assert!(CodebookShape::from_dims(&[1, -1, 2, 3]).is_none());
    }

    #[test]
    fn bytes_per_token() {
        let b = CacheBytes {
            kv_heads: 12,
            head_dim: 64,
            subspaces: 4,
            centroids: 256,
            value_type: ValueType::Float16,
            window_tokens: 0,
        };
        assert_eq!(
            (b.float_keys(), b.key_codes(), b.values(), b.codebooks()),
            (3072, 48, 1536, 786_432)
        );
        assert_eq!(b.keys_amortised(1024), 48.0 + 768.0);
        let w = CacheBytes {
            window_tokens: 68,
            ..b
        };
        assert_eq!(w.key_window(), 2 * 12 * 64 * 68);
        assert_eq!(w.keys_amortised(1024), 48.0 + 768.0 + 102.0);
        // Int8 rows: D bytes and a 4-byte scale per row; the window stays float16.
        let q = CacheBytes {
            value_type: ValueType::Int8,
            ..w
        };
        assert_eq!((q.values(), q.key_window()), (12 * 68, w.key_window()));
    }

    #[test]
    fn window_rows_and_tokens_agree() {
        for (sinks, window) in [(0, 1), (4, 64), (4, 0), (1, 3)] {
            for n in 0..200 {
                let rows = window::rows(n, sinks, window);
                let mut seen = 0;
                for t in 0..n {
                    if let Some(r) = window::row(t, n, sinks, window) {
                        assert_eq!(window::token(r, n, sinks, window), t);
                        assert_eq!(r, seen, "rows in token order");
                        seen += 1;
                    }
                    // The newest query (position n-1) scores exactly what the window holds.
                    assert_eq!(
                        window::exact(t, n - 1, sinks, window),
                        window::row(t, n, sinks, window).is_some(),
                        "n={n} t={t} sinks={sinks} window={window}"
                    );
                }
                assert_eq!(seen, rows);
            }
        }
    }

    #[test]
    fn tables_are_consistent() {
        assert_eq!(input::name(input::CODEBOOKS), "codebooks");
        assert_eq!(output::name(output::PRESENT_VALUE), "present_value");
        assert_eq!(window::rows(5, 4, 64), 5);
        assert_eq!(window::rows(500, 4, 64), 68);
        assert_eq!(min_onnxruntime(), "1.17");
        assert_eq!(naming::codes_name("present.3.key"), "present.3.key_codes");
        assert_eq!(naming::codebooks_name(7), "lookat.codebooks.7");
    }

    /// The committed JSON the Python side reads is what this file generates.
    #[test]
    fn contract_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contract.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == json(),
            "{path} is stale or missing: run `cargo run -p lookat-contract > contract/contract.json`"
        );
    }
}
