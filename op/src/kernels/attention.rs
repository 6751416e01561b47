//! One call of LookatAttention: append the new tokens to the cache (keys as codes), then score
//! every cached key through per-query lookup tables, softmax, and sum values.
//!
//! Prefill (S > 1) and decode (S = 1) are the same code path: query `s` sits at position `P + s`
//! and sees the tokens `0..=P + s` that the mask allows.

use super::geometry::invalid;
use super::{
    adc_scores, Geometry, LookatError, OnlineSoftmax, ParallelFor, PreparedCodebook, ValueElem,
};

/// Tokens scored per step: scores and value rows of a block stay in L1/L2.
const TOKEN_BLOCK: usize = 256;
/// Queries processed together (their tables and accumulators stay in cache while the cache
/// streams by once): all of a decode step, a slice of a prefill.
const QUERY_CHUNK: usize = 16;

/// Attribute values of the node.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AttentionOptions {
    /// Softmax scale; `None` means `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Score the keys of this call's own tokens exactly (`q·k`) instead of through their codes.
    pub exact_current: bool,
}

/// Flat, row-major input buffers; shapes are in [`Geometry`] and `docs/op-spec.md`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionInputs<'a, V> {
    /// `[B, S, H*D]`
    pub query: &'a [f32],
    /// `[B, S, H*D]`
    pub key: &'a [f32],
    /// `[B, S, H*D]`
    pub value: &'a [f32],
    /// `[B, H, P, m]`
    pub past_key_codes: &'a [u8],
    /// `[B, H, P, D]`
    pub past_value: &'a [V],
    /// `[B, P+S]`, nonzero = attend
    pub attention_mask: Option<&'a [i64]>,
    /// `[H, m, K, D/m]`
    pub codebooks: &'a [f32],
}

/// Flat, row-major output buffers.
#[derive(Debug)]
pub struct AttentionOutputs<'a, V> {
    /// `[B, S, H*D]`
    pub output: &'a mut [f32],
    /// `[B, H, P+S, m]`
    pub present_key_codes: &'a mut [u8],
    /// `[B, H, P+S, D]`
    pub present_value: &'a mut [V],
}

/// A raw pointer that tasks share to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
struct DisjointWriter<T>(*mut T);

// SAFETY: tasks only write through it at ranges that no other task touches (see each use).
unsafe impl<T: Send> Sync for DisjointWriter<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for DisjointWriter<T> {}

impl<T> DisjointWriter<T> {
    /// # Safety
    /// `offset + len` must lie inside the buffer, and no other live slice may overlap the range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

fn check_len(name: &str, got: usize, want: usize) -> Result<(), LookatError> {
    if got == want {
        Ok(())
    } else {
        Err(invalid(format!(
            "buffer '{name}' holds {got} elements, its shape needs {want}"
        )))
    }
}

/// Runs one LookatAttention call. `par` decides on which threads the (batch, head) tasks run.
pub fn lookat_attention<V: ValueElem>(
    g: &Geometry,
    opts: &AttentionOptions,
    inp: &AttentionInputs<'_, V>,
    out: AttentionOutputs<'_, V>,
    par: &dyn ParallelFor,
) -> Result<(), LookatError> {
    let (b_n, h_n, d, s_n, p_n, m, k) = (
        g.batch,
        g.heads,
        g.head_dim,
        g.new_tokens,
        g.past_tokens,
        g.subspaces,
        g.centroids,
    );
    let t_n = g.total_tokens();
    let e = g.hidden();
    check_len("query", inp.query.len(), b_n * s_n * e)?;
    check_len("key", inp.key.len(), b_n * s_n * e)?;
    check_len("value", inp.value.len(), b_n * s_n * e)?;
    check_len(
        "past_key_codes",
        inp.past_key_codes.len(),
        b_n * h_n * p_n * m,
    )?;
    check_len("past_value", inp.past_value.len(), b_n * h_n * p_n * d)?;
    if let Some(mask) = inp.attention_mask {
        check_len("attention_mask", mask.len(), b_n * t_n)?;
    }
    check_len("codebooks", inp.codebooks.len(), h_n * m * k * g.sub_dim())?;
    check_len("output", out.output.len(), b_n * s_n * e)?;
    check_len(
        "present_key_codes",
        out.present_key_codes.len(),
        b_n * h_n * t_n * m,
    )?;
    check_len(
        "present_value",
        out.present_value.len(),
        b_n * h_n * t_n * d,
    )?;
    if k < 256 {
        if let Some(pos) = inp.past_key_codes.iter().position(|&c| c as usize >= k) {
            let (bh, rest) = (pos / (p_n * m), pos % (p_n * m));
            return Err(invalid(format!(
                "input 'past_key_codes' holds code {} at [batch {}, head {}, token {}, subspace {}], \
                 but the codebooks have only {k} centroids",
                inp.past_key_codes[pos],
                bh / h_n,
                bh % h_n,
                rest / m,
                rest % m
            )));
        }
    }

    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let output = DisjointWriter(out.output.as_mut_ptr());
    let codes_out = DisjointWriter(out.present_key_codes.as_mut_ptr());
    let values_out = DisjointWriter(out.present_value.as_mut_ptr());

    let sub = g.sub_dim();
    // Laid out once per head, not once per (batch row, head) task.
    let codebooks: Vec<PreparedCodebook> = (0..h_n)
        .map(|h| PreparedCodebook::new(&inp.codebooks[h * m * k * sub..][..m * k * sub], m, k, sub))
        .collect();
    let task = |bh: usize| {
        let (b, h) = (bh / h_n, bh % h_n);
        let codebook = &codebooks[h];
        let mut dist = vec![0.0f32; k];
        // SAFETY: task (b, h) alone owns the [b, h] block of the present tensors.
        let codes = unsafe { codes_out.slice(bh * t_n * m, t_n * m) };
        // SAFETY: as above.
        let values = unsafe { values_out.slice(bh * t_n * d, t_n * d) };
        let past_codes = &inp.past_key_codes[bh * p_n * m..][..p_n * m];
        let past_values = &inp.past_value[bh * p_n * d..][..p_n * d];
        let new_row = |s: usize| (b * s_n + s) * e + h * d;

        // This call's tokens go to the end of the cache first; the past is copied block by block
        // below, while the first query chunk reads it, so past values cross memory once.
        for s in 0..s_n {
            let key = &inp.key[new_row(s)..][..d];
            codebook.encode(key, &mut codes[(p_n + s) * m..][..m], &mut dist);
            let src = &inp.value[new_row(s)..][..d];
            for (dst, &v) in values[(p_n + s) * d..][..d].iter_mut().zip(src) {
                *dst = V::from_f32(v);
            }
        }
        if s_n == 0 {
            codes[..p_n * m].copy_from_slice(past_codes);
            values[..p_n * d].copy_from_slice(past_values);
            return;
        }

        let mask = inp.attention_mask.map(|mk| &mk[b * t_n..][..t_n]);
        let allowed = |t: usize| mask.is_none_or(|mk| mk[t] != 0);
        let mut scores = vec![0.0f32; TOKEN_BLOCK];
        for first in (0..s_n).step_by(QUERY_CHUNK) {
            let queries = first..(first + QUERY_CHUNK).min(s_n);
            let mut luts = vec![0.0f32; queries.len() * m * k];
            for (s, lut) in queries.clone().zip(luts.chunks_exact_mut(m * k)) {
                codebook.build_lut(&inp.query[new_row(s)..][..d], scale, lut);
            }
            let mut states: Vec<OnlineSoftmax> =
                queries.clone().map(|_| OnlineSoftmax::new(d)).collect();
            let last_visible = p_n + queries.end; // exclusive bound over the chunk's queries
            for start in (0..t_n).step_by(TOKEN_BLOCK) {
                let end = (start + TOKEN_BLOCK).min(t_n);
                if first == 0 && start < p_n {
                    let past_end = end.min(p_n);
                    codes[start * m..past_end * m]
                        .copy_from_slice(&past_codes[start * m..past_end * m]);
                    values[start * d..past_end * d]
                        .copy_from_slice(&past_values[start * d..past_end * d]);
                }
                if start >= last_visible {
                    continue; // still copying the past, but no query of this chunk sees it
                }
                for ((s, lut), state) in queries
                    .clone()
                    .zip(luts.chunks_exact(m * k))
                    .zip(&mut states)
                {
                    let stop = end.min(p_n + s + 1);
                    if stop <= start {
                        continue;
                    }
                    let block = &mut scores[..stop - start];
                    adc_scores(lut, &codes[start * m..stop * m], k, m, block);
                    if opts.exact_current {
                        let query = &inp.query[new_row(s)..][..d];
                        for t in start.max(p_n)..stop {
                            let key = &inp.key[new_row(t - p_n)..][..d];
                            block[t - start] =
                                scale * query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>();
                        }
                    }
                    state.update(block, |i| allowed(start + i), &values[start * d..stop * d]);
                }
            }
            for (s, state) in queries.zip(&states) {
                // SAFETY: row (b, s) of head h: D floats that only task (b, h) writes.
                state.finish(unsafe { output.slice(new_row(s), d) });
            }
        }
    };
    par.run(b_n * h_n, &task);
    Ok(())
}
