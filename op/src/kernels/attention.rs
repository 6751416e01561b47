//! One call of LookatAttention: append the new tokens to the cache (keys as codes), then score
//! every cached key through per-query lookup tables, softmax, and sum values.
//!
//! Prefill (S > 1) and decode (S = 1) are the same code path: query `s` sits at position `P + s`
//! and sees the tokens `0..=P + s` that the mask allows.

use super::geometry::invalid;
use super::{
    adc_scores, build_lut, encode_key, masked_softmax_in_place, weighted_value_sum, Geometry,
    LookatError, ParallelFor, ValueElem,
};

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

    let task = |bh: usize| {
        let (b, h) = (bh / h_n, bh % h_n);
        let codebook = &inp.codebooks[h * m * k * g.sub_dim()..][..m * k * g.sub_dim()];
        // SAFETY: task (b, h) alone owns the [b, h] block of the present tensors.
        let codes = unsafe { codes_out.slice(bh * t_n * m, t_n * m) };
        // SAFETY: as above.
        let values = unsafe { values_out.slice(bh * t_n * d, t_n * d) };
        let new_row = |s: usize| (b * s_n + s) * e + h * d;

        codes[..p_n * m].copy_from_slice(&inp.past_key_codes[bh * p_n * m..][..p_n * m]);
        values[..p_n * d].copy_from_slice(&inp.past_value[bh * p_n * d..][..p_n * d]);
        for s in 0..s_n {
            let key = &inp.key[new_row(s)..][..d];
            encode_key(key, codebook, k, &mut codes[(p_n + s) * m..][..m]);
            let src = &inp.value[new_row(s)..][..d];
            for (dst, &v) in values[(p_n + s) * d..][..d].iter_mut().zip(src) {
                *dst = V::from_f32(v);
            }
        }

        let mask = inp.attention_mask.map(|mk| &mk[b * t_n..][..t_n]);
        let mut lut = vec![0.0f32; m * k];
        let mut probs = vec![0.0f32; t_n];
        for s in 0..s_n {
            let visible = p_n + s + 1;
            let query = &inp.query[new_row(s)..][..d];
            build_lut(query, codebook, k, m, scale, &mut lut);
            let probs = &mut probs[..visible];
            adc_scores(&lut, &codes[..visible * m], k, m, probs);
            if opts.exact_current {
                for (t, score) in probs.iter_mut().enumerate().skip(p_n) {
                    let key = &inp.key[new_row(t - p_n)..][..d];
                    *score = scale * query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>();
                }
            }
            masked_softmax_in_place(probs, |t| mask.is_none_or(|mk| mk[t] != 0));
            // SAFETY: row (b, s) of head h: D floats that only task (b, h) writes.
            let out_row = unsafe { output.slice(new_row(s), d) };
            weighted_value_sum(probs, &values[..visible * d], out_row);
        }
    };
    par.run(b_n * h_n, &task);
    Ok(())
}
