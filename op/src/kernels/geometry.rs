//! Shapes of one LookatAttention call, checked against each other before anything is touched.

use std::fmt;

/// Why a call was refused. Messages name the offending input or attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookatError {
    /// The caller passed something the contract does not allow.
    InvalidArgument(String),
    /// A bug or a broken invariant inside the op.
    Internal(String),
}

impl fmt::Display for LookatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookatError::InvalidArgument(m) | LookatError::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LookatError {}

pub(crate) fn invalid(msg: impl Into<String>) -> LookatError {
    LookatError::InvalidArgument(msg.into())
}

/// How the new tokens' query/key/value rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[B, S, heads·D]`: heads side by side (GPT-2's fused QKV split).
    #[default]
    TokenMajor,
    /// `[B, heads, S, D]`: head-major, what exporters produce after rotary embeddings.
    HeadMajor,
}

/// Every size of one call. `head_dim = subspaces * sub_dim`; query head `h` reads kv head
/// `h / (heads / kv_heads)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    /// H: query heads.
    pub heads: usize,
    /// H_kv: key/value heads, dividing `heads` (equal for multi-head attention).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// S: tokens arriving in this call.
    pub new_tokens: usize,
    /// P: tokens already in the cache.
    pub past_tokens: usize,
    /// m: subspaces per key (codes per token and head).
    pub subspaces: usize,
    /// K: centroids per subspace (at most 256, so a code fits a byte).
    pub centroids: usize,
    /// Layout of the query, key and value inputs.
    pub layout: Layout,
    /// C, rows per (batch row, kv head) of a shared (max-length) cache buffer: past and present
    /// tensors are then `[B, H_kv, C, ·]` and hold P, respectively P + S, valid rows. `None`:
    /// compact caches, `[B, H_kv, P, ·]` in and `[B, H_kv, P + S, ·]` out.
    pub capacity: Option<usize>,
}

/// The shapes of the inputs, as ONNX Runtime reports them.
#[derive(Debug, Clone, Copy)]
pub struct ShapeInputs<'a> {
    pub query: &'a [i64],
    pub key: &'a [i64],
    pub value: &'a [i64],
    pub past_key_codes: &'a [i64],
    pub past_value: &'a [i64],
    pub attention_mask: Option<&'a [i64]>,
    pub codebooks: &'a [i64],
    /// The value of input `past_sequence_length`, when given (shared cache buffers).
    pub past_sequence_length: Option<i64>,
    /// Elements after the D values of a value cache row (4 for int8 rows: the scale).
    pub value_row_extra: usize,
}

/// Largest element count of any one tensor the op agrees to produce or scan (2^40).
const MAX_ELEMENTS: usize = 1 << 40;

fn dims(name: &str, shape: &[i64], rank: usize, layout: &str) -> Result<Vec<usize>, LookatError> {
    if shape.len() != rank {
        return Err(invalid(format!(
            "input '{name}' must have rank {rank} {layout}, got shape {shape:?}"
        )));
    }
    let mut count: usize = 1;
    let mut out = Vec::with_capacity(rank);
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            invalid(format!(
                "input '{name}' has a negative dimension: shape {shape:?}"
            ))
        })?;
        count = count
            .checked_mul(d)
            .filter(|&c| c <= MAX_ELEMENTS)
            .ok_or_else(|| invalid(format!("input '{name}' is too large: shape {shape:?}")))?;
        out.push(d);
    }
    Ok(out)
}

impl Geometry {
    /// Multi-head attention over `[B, S, H·D]` rows (kv heads = heads).
    #[allow(clippy::too_many_arguments)]
    pub fn multi_head(
        batch: usize,
        heads: usize,
        head_dim: usize,
        new_tokens: usize,
        past_tokens: usize,
        subspaces: usize,
        centroids: usize,
    ) -> Geometry {
        Geometry {
            batch,
            heads,
            kv_heads: heads,
            head_dim,
            new_tokens,
            past_tokens,
            subspaces,
            centroids,
            layout: Layout::TokenMajor,
            capacity: None,
        }
    }

    pub fn sub_dim(&self) -> usize {
        self.head_dim / self.subspaces
    }
    /// Width of the output rows, `H·D`.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    /// G: query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }
    /// T = P + S: tokens in the present cache.
    pub fn total_tokens(&self) -> usize {
        self.past_tokens + self.new_tokens
    }
    /// Rows per (batch row, kv head) of the present cache tensors: C, or P + S.
    pub fn present_rows(&self) -> usize {
        self.capacity.unwrap_or(self.total_tokens())
    }
    /// Rows per (batch row, kv head) of the past cache tensors: C, or P.
    pub fn past_rows(&self) -> usize {
        self.capacity.unwrap_or(self.past_tokens)
    }
    /// Elements of the query input.
    pub fn query_len(&self) -> usize {
        self.batch * self.new_tokens * self.heads * self.head_dim
    }
    /// Elements of the key (and value) input.
    pub fn kv_len(&self) -> usize {
        self.batch * self.new_tokens * self.kv_heads * self.head_dim
    }
    /// Offset of the D floats of (batch `b`, head `h`, new token `s`) in an input of `heads`
    /// heads.
    fn row(&self, b: usize, h: usize, heads: usize, s: usize) -> usize {
        let (s_n, d) = (self.new_tokens, self.head_dim);
        match self.layout {
            Layout::TokenMajor => ((b * s_n + s) * heads + h) * d,
            Layout::HeadMajor => ((b * heads + h) * s_n + s) * d,
        }
    }
    /// Offset of query head `h`'s row for new token `s` of batch row `b`.
    pub fn query_row(&self, b: usize, h: usize, s: usize) -> usize {
        self.row(b, h, self.heads, s)
    }
    /// Offset of kv head `g`'s key (or value) row for new token `s` of batch row `b`.
    pub fn kv_row(&self, b: usize, g: usize, s: usize) -> usize {
        self.row(b, g, self.kv_heads, s)
    }
    /// Offset of query head `h`'s output row for new token `s` of batch row `b` (`[B, S, H·D]`).
    pub fn output_row(&self, b: usize, h: usize, s: usize) -> usize {
        ((b * self.new_tokens + s) * self.heads + h) * self.head_dim
    }

    /// Checks every input shape against the others and against the head counts.
    pub fn from_shapes(
        s: &ShapeInputs<'_>,
        num_heads: i64,
        num_kv_heads: i64,
    ) -> Result<Geometry, LookatError> {
        if num_heads < 1 {
            return Err(invalid(format!(
                "attribute 'num_heads' must be >= 1, got {num_heads}"
            )));
        }
        if num_kv_heads < 1 || num_heads % num_kv_heads != 0 {
            return Err(invalid(format!(
                "attribute 'num_kv_heads' must be >= 1 and divide num_heads={num_heads}, got {num_kv_heads}"
            )));
        }
        let (heads, kv_heads) = (num_heads as usize, num_kv_heads as usize);
        let (layout, batch, new_tokens, head_dim) = match s.query.len() {
            3 => {
                let q = dims(
                    "query",
                    s.query,
                    3,
                    "[batch, new_tokens, num_heads*head_dim]",
                )?;
                if q[2] == 0 || !q[2].is_multiple_of(heads) {
                    return Err(invalid(format!(
                        "input 'query' last dimension {} is not a positive multiple of num_heads={heads}",
                        q[2]
                    )));
                }
                (Layout::TokenMajor, q[0], q[1], q[2] / heads)
            }
            4 => {
                let q = dims(
                    "query",
                    s.query,
                    4,
                    "[batch, num_heads, new_tokens, head_dim]",
                )?;
                if q[1] != heads || q[3] == 0 {
                    return Err(invalid(format!(
                        "input 'query' shape {:?} must be [batch, num_heads={heads}, new_tokens, head_dim > 0]",
                        s.query
                    )));
                }
                (Layout::HeadMajor, q[0], q[2], q[3])
            }
            _ => {
                return Err(invalid(format!(
                "input 'query' must have rank 3 [batch, new_tokens, num_heads*head_dim] or rank 4 \
                     [batch, num_heads, new_tokens, head_dim], got shape {:?}",
                s.query
            )))
            }
        };
        let want: Vec<usize> = match layout {
            Layout::TokenMajor => vec![batch, new_tokens, kv_heads * head_dim],
            Layout::HeadMajor => vec![batch, kv_heads, new_tokens, head_dim],
        };
        let want_text = match layout {
            Layout::TokenMajor => "[batch, new_tokens, num_kv_heads*head_dim]",
            Layout::HeadMajor => "[batch, num_kv_heads, new_tokens, head_dim]",
        };
        for (name, shape) in [("key", s.key), ("value", s.value)] {
            let d = dims(name, shape, want.len(), want_text)?;
            if d != want {
                return Err(invalid(format!(
                    "input '{name}' shape {shape:?} must be {want:?} {want_text} for query shape {:?} \
                     and num_kv_heads={kv_heads}",
                    s.query
                )));
            }
        }

        let cb = dims(
            "codebooks",
            s.codebooks,
            4,
            "[num_kv_heads, subspaces, centroids, head_dim/subspaces]",
        )?;
        let (cb_heads, subspaces, centroids, sub_dim) = (cb[0], cb[1], cb[2], cb[3]);
        if cb_heads != kv_heads {
            return Err(invalid(format!(
                "input 'codebooks' has {cb_heads} heads (shape {:?}), the node has num_kv_heads={kv_heads}",
                s.codebooks
            )));
        }
        if subspaces == 0 || !head_dim.is_multiple_of(subspaces) || subspaces * sub_dim != head_dim
        {
            return Err(invalid(format!(
                "input 'codebooks' shape {:?} does not split head_dim={head_dim} into subspaces: \
                 need subspaces dividing {head_dim} and last dimension head_dim/subspaces",
                s.codebooks
            )));
        }
        if !(1..=256).contains(&centroids) {
            return Err(invalid(format!(
                "input 'codebooks' has {centroids} centroids per subspace (shape {:?}); 1 to 256 allowed",
                s.codebooks
            )));
        }

        let pc = dims(
            "past_key_codes",
            s.past_key_codes,
            4,
            "[batch, num_kv_heads, past_tokens, subspaces]",
        )?;
        if pc[0] != batch || pc[1] != kv_heads || pc[3] != subspaces {
            return Err(invalid(format!(
                "input 'past_key_codes' shape {:?} must be [batch={batch}, num_kv_heads={kv_heads}, past_tokens, subspaces={subspaces}]",
                s.past_key_codes
            )));
        }
        let rows = pc[2];
        let pv = dims(
            "past_value",
            s.past_value,
            4,
            "[batch, num_kv_heads, past_tokens, head_dim]",
        )?;
        let row = head_dim + s.value_row_extra;
        if pv[0] != batch || pv[1] != kv_heads || pv[3] != row {
            let last = if s.value_row_extra > 0 {
                format!("head_dim + {} (the row's scale) = {row}", s.value_row_extra)
            } else {
                format!("head_dim={head_dim}")
            };
            return Err(invalid(format!(
                "input 'past_value' shape {:?} must be [batch={batch}, num_kv_heads={kv_heads}, past_tokens, {last}]",
                s.past_value
            )));
        }
        if pv[2] != rows {
            return Err(invalid(format!(
                "inputs 'past_key_codes' and 'past_value' hold different past lengths ({rows} vs {})",
                pv[2]
            )));
        }
        let (past_tokens, capacity) = match s.past_sequence_length {
            None => (rows, None),
            Some(p) => {
                let fits = usize::try_from(p)
                    .ok()
                    .filter(|&p| p.checked_add(new_tokens).is_some_and(|t| t <= rows));
                let p = fits.ok_or_else(|| {
                    invalid(format!(
                        "input 'past_sequence_length' is {p}: with {new_tokens} new tokens the \
                         shared cache buffers (past_key_codes shape {:?}) must hold \
                         past_sequence_length + new_tokens <= {rows} rows, past_sequence_length >= 0",
                        s.past_key_codes
                    ))
                })?;
                (p, Some(rows))
            }
        };
        let total = past_tokens
            .checked_add(new_tokens)
            .ok_or_else(|| invalid("past_tokens + new_tokens overflows"))?;
        if let Some(mask) = s.attention_mask {
            let m = dims(
                "attention_mask",
                mask,
                2,
                "[batch, past_tokens + new_tokens]",
            )?;
            if m[0] != batch || m[1] != total {
                return Err(invalid(format!(
                    "input 'attention_mask' shape {mask:?} must be [batch={batch}, past_tokens + new_tokens={total}]"
                )));
            }
        }
        let g = Geometry {
            batch,
            heads,
            kv_heads,
            head_dim,
            new_tokens,
            past_tokens,
            subspaces,
            centroids,
            layout,
            capacity,
        };
        // Present tensors and the output must be addressable too.
        for (name, shape) in [
            (
                "present_value",
                [batch, kv_heads, g.present_rows(), head_dim],
            ),
            ("output", [batch, new_tokens, heads, head_dim]),
        ] {
            dims(name, &shape.map(|d| d as i64), 4, "")?;
        }
        Ok(g)
    }
}
