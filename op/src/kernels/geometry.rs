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

/// Every size of one call. `head_dim = subspaces * sub_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// S: tokens arriving in this call.
    pub new_tokens: usize,
    /// P: tokens already in the cache.
    pub past_tokens: usize,
    /// m: subspaces per key (codes per token and head).
    pub subspaces: usize,
    /// K: centroids per subspace (at most 256, so a code fits a byte).
    pub centroids: usize,
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
    pub fn sub_dim(&self) -> usize {
        self.head_dim / self.subspaces
    }
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    /// T = P + S: tokens in the present cache.
    pub fn total_tokens(&self) -> usize {
        self.past_tokens + self.new_tokens
    }

    /// Checks every input shape against the others and against `num_heads`.
    pub fn from_shapes(s: &ShapeInputs<'_>, num_heads: i64) -> Result<Geometry, LookatError> {
        if num_heads < 1 {
            return Err(invalid(format!(
                "attribute 'num_heads' must be >= 1, got {num_heads}"
            )));
        }
        let heads = num_heads as usize;
        let q = dims(
            "query",
            s.query,
            3,
            "[batch, new_tokens, num_heads*head_dim]",
        )?;
        let (batch, new_tokens, hidden) = (q[0], q[1], q[2]);
        if hidden == 0 || !hidden.is_multiple_of(heads) {
            return Err(invalid(format!(
                "input 'query' last dimension {hidden} is not a positive multiple of num_heads={heads}"
            )));
        }
        let head_dim = hidden / heads;
        for (name, shape) in [("key", s.key), ("value", s.value)] {
            let d = dims(name, shape, 3, "[batch, new_tokens, num_heads*head_dim]")?;
            if d != q {
                return Err(invalid(format!(
                    "input '{name}' shape {shape:?} differs from 'query' shape {:?}",
                    s.query
                )));
            }
        }

        let cb = dims(
            "codebooks",
            s.codebooks,
            4,
            "[num_heads, subspaces, centroids, head_dim/subspaces]",
        )?;
        let (cb_heads, subspaces, centroids, sub_dim) = (cb[0], cb[1], cb[2], cb[3]);
        if cb_heads != heads {
            return Err(invalid(format!(
                "input 'codebooks' has {cb_heads} heads (shape {:?}), the node has num_heads={heads}",
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
            "[batch, num_heads, past_tokens, subspaces]",
        )?;
        if pc[0] != batch || pc[1] != heads || pc[3] != subspaces {
            return Err(invalid(format!(
                "input 'past_key_codes' shape {:?} must be [batch={batch}, num_heads={heads}, past_tokens, subspaces={subspaces}]",
                s.past_key_codes
            )));
        }
        let past_tokens = pc[2];
        let pv = dims(
            "past_value",
            s.past_value,
            4,
            "[batch, num_heads, past_tokens, head_dim]",
        )?;
        if pv[0] != batch || pv[1] != heads || pv[3] != head_dim {
            return Err(invalid(format!(
                "input 'past_value' shape {:?} must be [batch={batch}, num_heads={heads}, past_tokens, head_dim={head_dim}]",
                s.past_value
            )));
        }
        if pv[2] != past_tokens {
            return Err(invalid(format!(
                "inputs 'past_key_codes' and 'past_value' hold different past lengths ({past_tokens} vs {})",
                pv[2]
            )));
        }
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
            head_dim,
            new_tokens,
            past_tokens,
            subspaces,
            centroids,
        };
        // Present tensors must be addressable too.
        dims(
            "present_value",
            &[batch as i64, heads as i64, total as i64, head_dim as i64],
            4,
            "",
        )?;
        Ok(g)
    }
}
