//! One call of LookatAttention: append the new tokens to the cache (keys as codes), then score
//! every cached key through per-query lookup tables, softmax, and sum values.
//!
//! Work is split by (batch row, kv head): a task encodes that kv head's new keys once, then scores
//! the queries of all its G query heads together, so each cache row is read once per call
//! whatever G is. A task's queries are numbered `i = s·G + r` (new token `s`, query head
//! `kv_head·G + r`): the queries scanned together sit at neighbouring positions.
//!
//! Prefill (S > 1) and decode (S = 1) are the same code path: a query of new token `s` sits at
//! position `P + s` and sees the tokens `0..=P + s` that the mask allows.

use std::ops::Range;

use lookat_contract::window;

use super::geometry::invalid;
use super::simd::{GROUP_MAX, PRODUCT_QUERIES, PRODUCT_TILE};
use super::{
    adc_scores_group, Geometry, KeyTransforms, LookatError, OnlineSoftmax, ParallelFor,
    PreparedCodebooks, ValueElem,
};

/// Tokens scored per step when one group of queries scans the cache: their scores and value
/// rows stay in L1/L2, and per-block work (maximum, rescaling) is amortized.
const TOKEN_BLOCK: usize = 256;
/// Tokens per step when several groups of queries scan together (prefill): a block of value
/// rows (16 KiB of float32 at D = 64) stays in L1 while every group of the chunk reads it.
const SHARED_TOKEN_BLOCK: usize = 64;
/// Queries processed together (their tables and accumulators stay in cache while the cache
/// streams by once): all of a decode step, a slice of a prefill.
const QUERY_CHUNK: usize = 16;
/// When the (batch row, head) tasks of a call with at most [`QUERY_CHUNK`] queries are too few
/// to keep every worker busy, each cache is split into token ranges of at least this many
/// tokens, scanned in parallel and merged (flash-decoding).
const SPLIT_MIN_TOKENS: usize = 1024;
/// Queries per task from which a call is a prefill that may take the matrix-product path
/// ([`Call::run_head_gemm`]).
const GEMM_MIN_QUERIES: usize = 32;
/// Queries whose scores and weights one product covers in the matrix-product path.
const GEMM_QUERY_CHUNK: usize = 64;
/// Largest mean number of tokens a query sees (at K = 256; scaled with K) for which the
/// matrix-product path is taken.
const GEMM_MAX_MEAN_VISIBLE: usize = 1024;
/// Present value caches at least this large are written with streaming stores: they do not fit
/// in cache anyway, and streaming saves the read-for-ownership of every destination line.
const STREAM_MIN_BYTES: usize = 8 << 20;

/// Attribute values of the node.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AttentionOptions {
    /// Softmax scale; `None` means `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Score the keys of this call's own tokens exactly (`q·k`) instead of through their codes.
    pub exact_current: bool,
    /// The first `sinks` tokens are scored exactly, from the full-precision key window.
    pub sinks: usize,
    /// Each query scores its `window` most recent tokens exactly (itself included).
    pub window: usize,
}

impl AttentionOptions {
    /// Whether the call keeps a full-precision key window (inputs and outputs `*_key_window`).
    pub fn windowed(&self) -> bool {
        self.sinks + self.window > 0
    }
}

/// Flat, row-major input buffers; shapes are in [`Geometry`] and `docs/op-spec.md`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionInputs<'a, V: ValueElem> {
    /// `[B, S, H*D]` or `[B, H, S, D]` ([`Geometry::layout`])
    pub query: &'a [f32],
    /// `[B, S, H_kv*D]` or `[B, H_kv, S, D]`
    pub key: &'a [f32],
    /// `[B, S, H_kv*D]` or `[B, H_kv, S, D]`
    pub value: &'a [f32],
    /// `[B, H_kv, P, m]`, or `[B, H_kv, C, m]` with a capacity ([`Geometry::capacity`]); empty
    /// when `past_in_present`
    pub past_key_codes: &'a [u8],
    /// `[B, H_kv, P, D + V::ROW_EXTRA]`, or `[B, H_kv, C, ·]` with a capacity; empty when
    /// `past_in_present`
    pub past_value: &'a [V],
    /// Shared cache buffers only: the present codes and values already hold the P past rows (the
    /// host bound one buffer as both past and present), so the call writes only rows
    /// `P..P + S` and copies nothing.
    pub past_in_present: bool,
    /// `[B, P+S]`, nonzero = attend
    pub attention_mask: Option<&'a [i64]>,
    /// `[H_kv, m, K, D/m]`
    pub codebooks: &'a [f32],
    /// `[B, H_kv, min(P, sinks + window), D]`: the keys of the past's sink and most recent tokens
    /// (`lookat_contract::window`); empty without a window.
    pub past_key_window: &'a [V::Window],
    /// Keys encoded as `k·A`, tables built from `q·B` (`None`: the identity).
    pub transforms: Option<&'a KeyTransforms>,
    /// `codebooks` already laid out for the kernels (the op does that once per session when
    /// they are an initializer); `None` lays them out in this call.
    pub prepared: Option<&'a PreparedCodebooks>,
}

/// Flat, row-major output buffers.
#[derive(Debug)]
pub struct AttentionOutputs<'a, V: ValueElem> {
    /// `[B, S, H*D]`
    pub output: &'a mut [f32],
    /// `[B, H_kv, P+S, m]`, or `[B, H_kv, C, m]` with a capacity
    pub present_key_codes: &'a mut [u8],
    /// `[B, H_kv, P+S, D + V::ROW_EXTRA]`, or `[B, H_kv, C, ·]` with a capacity
    pub present_value: &'a mut [V],
    /// `[B, H_kv, min(P+S, sinks + window), D]`; empty without a window.
    pub present_key_window: &'a mut [V::Window],
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

/// Runs one LookatAttention call. `par` decides on which threads the tasks run: one per
/// (batch row, kv head), or per (batch row, kv head, token range) for short calls on few heads.
pub fn lookat_attention<V: ValueElem>(
    g: &Geometry,
    opts: &AttentionOptions,
    inp: &AttentionInputs<'_, V>,
    out: AttentionOutputs<'_, V>,
    par: &dyn ParallelFor,
) -> Result<(), LookatError> {
    let (b_n, h_n, d, s_n, p_n, m, k) = (
        g.batch,
        g.kv_heads,
        g.head_dim,
        g.new_tokens,
        g.past_tokens,
        g.subspaces,
        g.centroids,
    );
    if g.kv_heads == 0 || !g.heads.is_multiple_of(g.kv_heads) {
        return Err(invalid(format!(
            "num_kv_heads={} must divide num_heads={}",
            g.kv_heads, g.heads
        )));
    }
    let t_n = g.total_tokens();
    if g.present_rows() < t_n {
        return Err(invalid(format!(
            "the shared cache buffers hold {} rows, the call needs {t_n}",
            g.present_rows()
        )));
    }
    if inp.past_in_present && g.capacity.is_none() {
        return Err(LookatError::Internal(
            "past_in_present needs shared cache buffers (a capacity)".into(),
        ));
    }
    check_len("query", inp.query.len(), g.query_len())?;
    check_len("key", inp.key.len(), g.kv_len())?;
    check_len("value", inp.value.len(), g.kv_len())?;
    let past_rows = if inp.past_in_present {
        0
    } else {
        g.past_rows()
    };
    check_len(
        "past_key_codes",
        inp.past_key_codes.len(),
        b_n * h_n * past_rows * m,
    )?;
    let row = d + V::ROW_EXTRA;
    check_len(
        "past_value",
        inp.past_value.len(),
        b_n * h_n * past_rows * row,
    )?;
    if let Some(mask) = inp.attention_mask {
        check_len("attention_mask", mask.len(), b_n * t_n)?;
    }
    check_len("codebooks", inp.codebooks.len(), h_n * m * k * g.sub_dim())?;
    check_len("output", out.output.len(), g.query_len())?;
    check_len(
        "present_key_codes",
        out.present_key_codes.len(),
        b_n * h_n * g.present_rows() * m,
    )?;
    check_len(
        "present_value",
        out.present_value.len(),
        b_n * h_n * g.present_rows() * row,
    )?;
    let (past_window_rows, present_window_rows) = if opts.windowed() {
        (
            window::rows(p_n, opts.sinks, opts.window),
            window::rows(t_n, opts.sinks, opts.window),
        )
    } else {
        (0, 0)
    };
    check_len(
        "past_key_window",
        inp.past_key_window.len(),
        b_n * h_n * past_window_rows * d,
    )?;
    check_len(
        "present_key_window",
        out.present_key_window.len(),
        b_n * h_n * present_window_rows * d,
    )?;
    if k < 256 {
        // Only the P valid rows of each block are codes (a shared buffer's tail is not read).
        let past = if inp.past_in_present {
            &*out.present_key_codes
        } else {
            inp.past_key_codes
        };
        let rows = g.past_rows();
        let bad = (0..b_n * h_n).find_map(|bh| {
            let block = &past[bh * rows * m..][..p_n * m];
            block
                .iter()
                .position(|&c| c as usize >= k)
                .map(|pos| (bh, pos, block[pos]))
        });
        if let Some((bh, rest, code)) = bad {
            return Err(invalid(format!(
                "input 'past_key_codes' holds code {} at [batch {}, kv head {}, token {}, subspace {}], \
                 but the codebooks have only {k} centroids",
                code,
                bh / h_n,
                bh % h_n,
                rest / m,
                rest % m
            )));
        }
    }

    let sub = g.sub_dim();
    let owned;
    let books = match inp.prepared {
        Some(p) if p.fits(h_n, m, k, sub) => p,
        Some(_) => {
            return Err(LookatError::Internal(
                "prepared codebooks do not fit this call's shapes".into(),
            ))
        }
        None => {
            owned = PreparedCodebooks::new(inp.codebooks, h_n, m, k, sub);
            &owned
        }
    };
    if inp.transforms.is_some_and(|t| !t.fits(h_n, d)) {
        return Err(invalid(format!(
            "key/query transforms do not fit num_kv_heads={h_n}, head_dim={d}"
        )));
    }
    let present_bytes = std::mem::size_of_val(out.present_value);
    let call = Call {
        g: *g,
        inp,
        books,
        scale: opts.scale.unwrap_or(1.0 / (d as f32).sqrt()),
        exact_current: opts.exact_current,
        sinks: opts.sinks,
        window: opts.window,
        windowed: opts.windowed(),
        stream: present_bytes >= STREAM_MIN_BYTES,
        restrictive_mask: inp
            .attention_mask
            .map(|mk| mk.chunks(t_n.max(1)).map(|row| row.contains(&0)).collect())
            .unwrap_or_default(),
        output: DisjointWriter(out.output.as_mut_ptr()),
        codes_out: DisjointWriter(out.present_key_codes.as_mut_ptr()),
        values_out: DisjointWriter(out.present_value.as_mut_ptr()),
        window_out: DisjointWriter(out.present_key_window.as_mut_ptr()),
    };
    let tasks = b_n * h_n;
    if s_n == 0 {
        par.run(tasks, &|bh| {
            // SAFETY: task bh alone owns the [b, h] block of the present tensors.
            let (codes, values) = unsafe { call.present(bh, 0..p_n) };
            if !inp.past_in_present {
                codes.copy_from_slice(call.past_codes(bh));
                values.copy_from_slice(call.past_values(bh));
            }
            call.clear_tail(bh);
            call.write_window(bh);
        });
        return Ok(());
    }
    let queries = s_n * g.group();
    let splits = if queries <= QUERY_CHUNK {
        token_splits(tasks, t_n, par.parallelism())
    } else {
        1
    };
    if splits == 1 {
        par.run(tasks, &|bh| call.run_head(bh));
        return Ok(());
    }

    // Split scan: tables first (per head), then token ranges in parallel, then a merge.
    let ranges = token_ranges(t_n, splits);
    let table_len = queries * m * k;
    let mut tables = vec![0.0f32; tasks * table_len];
    let tables_out = DisjointWriter(tables.as_mut_ptr());
    par.run(tasks, &|bh| {
        call.write_new_tokens(bh);
        // SAFETY: task bh alone owns its tables.
        let tables = unsafe { tables_out.slice(bh * table_len, table_len) };
        call.build_tables(bh, 0..queries, tables);
    });
    let mut partials = vec![OnlineSoftmax::new(d); tasks * ranges.len() * queries];
    let partials_out = DisjointWriter(partials.as_mut_ptr());
    par.run(tasks * ranges.len(), &|task| {
        let (bh, range) = (task / ranges.len(), ranges[task % ranges.len()].clone());
        // SAFETY: this task alone owns its states, one per query.
        let states = unsafe { partials_out.slice(task * queries, queries) };
        // SAFETY: this task alone owns rows `range` of the [b, kv head] present block (the rows
        // of new tokens among them were written in the first phase and are only read now).
        let (codes, values) = unsafe { call.present(bh, range.clone()) };
        let tables = &tables[bh * table_len..][..table_len];
        call.scan(bh, 0..queries, tables, states, range, codes, values, true);
    });
    for bh in 0..tasks {
        for i in 0..queries {
            let mut state = partials[bh * ranges.len() * queries + i].clone();
            for r in 1..ranges.len() {
                state.merge(&partials[(bh * ranges.len() + r) * queries + i]);
            }
            // SAFETY: the pool has returned; this thread alone writes the output now.
            state.finish(unsafe { call.output_row(bh, i) });
        }
    }
    Ok(())
}

/// Whether a call of these shapes takes the prefill path of matrix products over dequantized
/// keys (per task; a task with a non-finite value falls back to lookup tables).
pub fn prefill_uses_products(g: &Geometry) -> bool {
    let queries = g.new_tokens * g.group();
    let mean_visible = g.past_tokens + g.new_tokens.div_ceil(2);
    queries >= GEMM_MIN_QUERIES && mean_visible <= GEMM_MAX_MEAN_VISIBLE * g.centroids / 256
}

/// Ranges of tokens per split: whole token blocks, as even as possible.
fn token_ranges(tokens: usize, splits: usize) -> Vec<Range<usize>> {
    let blocks_per_split = tokens.div_ceil(TOKEN_BLOCK).div_ceil(splits).max(1);
    let step = blocks_per_split * TOKEN_BLOCK;
    (0..tokens)
        .step_by(step)
        .map(|start| start..(start + step).min(tokens))
        .collect()
}

/// Token ranges per (batch row, head): enough tasks for two per worker, none shorter than
/// [`SPLIT_MIN_TOKENS`].
fn token_splits(tasks: usize, tokens: usize, workers: usize) -> usize {
    if workers <= 1 || tasks == 0 {
        return 1;
    }
    (2 * workers)
        .div_ceil(tasks)
        .min(tokens / SPLIT_MIN_TOKENS)
        .max(1)
}

/// What every task of one call shares: inputs, prepared codebooks and the output writers.
struct Call<'a, V: ValueElem> {
    g: Geometry,
    inp: &'a AttentionInputs<'a, V>,
    books: &'a PreparedCodebooks,
    scale: f32,
    exact_current: bool,
    sinks: usize,
    window: usize,
    windowed: bool,
    stream: bool,
    /// Per batch row: whether its mask disallows any token (an all-allowing row changes nothing,
    /// so its per-score checks are skipped).
    restrictive_mask: Vec<bool>,
    output: DisjointWriter<f32>,
    codes_out: DisjointWriter<u8>,
    values_out: DisjointWriter<V>,
    window_out: DisjointWriter<V::Window>,
}

// SAFETY: the writers are only used at ranges one task owns (see each use); the rest is shared
// read-only data.
unsafe impl<V: ValueElem> Sync for Call<'_, V> {}

impl<V: ValueElem> Call<'_, V> {
    /// Elements of one value cache row: D, and the row's scale for int8 rows.
    fn value_row(&self) -> usize {
        self.g.head_dim + V::ROW_EXTRA
    }

    /// The mask row of task `bh`'s batch row, or None when there is no mask or it allows every
    /// token.
    fn mask(&self, bh: usize) -> Option<&[i64]> {
        let (b, t_n) = (self.task(bh).0, self.g.total_tokens());
        let restrictive = self.restrictive_mask.get(b).copied().unwrap_or(false);
        self.inp
            .attention_mask
            .filter(|_| restrictive)
            .map(|mk| &mk[b * t_n..][..t_n])
    }

    /// (batch row, kv head) of task `bh`.
    fn task(&self, bh: usize) -> (usize, usize) {
        (bh / self.g.kv_heads, bh % self.g.kv_heads)
    }

    /// (query head, new token) of query `i` of task `bh`: `i = s·G + r`.
    fn query_of(&self, bh: usize, i: usize) -> (usize, usize) {
        let group = self.g.group();
        (self.task(bh).1 * group + i % group, i / group)
    }

    /// The D floats of query `i` of task `bh`.
    fn query(&self, bh: usize, i: usize) -> &[f32] {
        let (h, s) = self.query_of(bh, i);
        let row = self.g.query_row(self.task(bh).0, h, s);
        &self.inp.query[row..][..self.g.head_dim]
    }

    /// The D floats of this call's key (or value) of new token `s` for task `bh`.
    fn new_kv<'x>(&self, source: &'x [f32], bh: usize, s: usize) -> &'x [f32] {
        let (b, kv) = self.task(bh);
        &source[self.g.kv_row(b, kv, s)..][..self.g.head_dim]
    }

    /// The P past codes of task `bh` in the past input (not with `past_in_present`).
    fn past_codes(&self, bh: usize) -> &[u8] {
        let (p, m) = (self.g.past_tokens, self.g.subspaces);
        &self.inp.past_key_codes[bh * self.g.past_rows() * m..][..p * m]
    }

    /// The P past values of task `bh` in the past input (not with `past_in_present`).
    fn past_values(&self, bh: usize) -> &[V] {
        let (p, row) = (self.g.past_tokens, self.value_row());
        &self.inp.past_value[bh * self.g.past_rows() * row..][..p * row]
    }

    /// A shared buffer that is not the past's own memory gets zeros after the P + S valid rows,
    /// so that its content does not depend on what the allocator left there.
    fn clear_tail(&self, bh: usize) {
        if self.inp.past_in_present || self.g.capacity.is_none() {
            return;
        }
        let (t_n, rows) = (self.g.total_tokens(), self.g.present_rows());
        // SAFETY: rows T.. of the [b, kv head] block belong to task bh, which calls this once.
        let (codes, values) = unsafe { self.present(bh, t_n..rows) };
        codes.fill(0);
        values.fill(V::from_f32(0.0));
    }

    /// The full-precision key of token `t` of task `bh`, as the window stores it (rounded to the
    /// value type): from the past window for `t < P`, else from this call's keys. Only asked for
    /// tokens a window holds (sinks, or recent for some query of the call).
    fn window_key(&self, bh: usize, t: usize, out: &mut [f32]) {
        let (p_n, d) = (self.g.past_tokens, self.g.head_dim);
        if t >= p_n {
            for (o, &k) in out.iter_mut().zip(self.new_kv(self.inp.key, bh, t - p_n)) {
                *o = V::Window::from_f32(k).to_f32();
            }
            return;
        }
        let rows = window::rows(p_n, self.sinks, self.window);
        let r = window::row(t, p_n, self.sinks, self.window).unwrap_or(rows);
        for (o, &k) in out
            .iter_mut()
            .zip(&self.inp.past_key_window[(bh * rows + r) * d..][..d])
        {
            *o = k.to_f32();
        }
    }

    /// Writes the [b, kv head] block of the present key window: the sinks and the most recent
    /// `window` tokens of the present cache.
    fn write_window(&self, bh: usize) {
        if !self.windowed {
            return;
        }
        let (t_n, p_n, d) = (self.g.total_tokens(), self.g.past_tokens, self.g.head_dim);
        let (past_rows, rows) = (
            window::rows(p_n, self.sinks, self.window),
            window::rows(t_n, self.sinks, self.window),
        );
        // SAFETY: the [b, kv head] block of the window belongs to task bh.
        let out = unsafe { self.window_out.slice(bh * rows * d, rows * d) };
        for (r, dst) in out.chunks_exact_mut(d).enumerate() {
            let t = window::token(r, t_n, self.sinks, self.window);
            if t >= p_n {
                for (o, &k) in dst.iter_mut().zip(self.new_kv(self.inp.key, bh, t - p_n)) {
                    *o = V::Window::from_f32(k);
                }
            } else {
                // A token the present window keeps was in the past window (sink or recent).
                let pr = window::row(t, p_n, self.sinks, self.window).unwrap_or(0);
                dst.copy_from_slice(&self.inp.past_key_window[(bh * past_rows + pr) * d..][..d]);
            }
        }
    }

    /// Rows `tokens` of the [b, kv head] block of the present codes and values.
    ///
    /// # Safety
    /// No other live slice may overlap these rows.
    #[allow(clippy::mut_from_ref)]
    unsafe fn present(&self, bh: usize, tokens: Range<usize>) -> (&mut [u8], &mut [V]) {
        let (rows, m, row) = (self.g.present_rows(), self.g.subspaces, self.value_row());
        let n = tokens.len();
        // SAFETY: inside the [B, H_kv, rows, ·] buffers; exclusivity guaranteed by the caller.
        unsafe {
            (
                self.codes_out.slice((bh * rows + tokens.start) * m, n * m),
                self.values_out
                    .slice((bh * rows + tokens.start) * row, n * row),
            )
        }
    }

    /// The output row of query `i` of task `bh`.
    ///
    /// # Safety
    /// No other live slice may overlap that row.
    #[allow(clippy::mut_from_ref)]
    unsafe fn output_row(&self, bh: usize, i: usize) -> &mut [f32] {
        let (h, s) = self.query_of(bh, i);
        let row = self.g.output_row(self.task(bh).0, h, s);
        // SAFETY: D floats inside the output; exclusivity guaranteed by the caller.
        unsafe { self.output.slice(row, self.g.head_dim) }
    }

    /// Appends this call's tokens to the end of the [b, kv head] cache: codes of the keys, values.
    fn write_new_tokens(&self, bh: usize) {
        let g = &self.g;
        let (p_n, s_n, m, d) = (g.past_tokens, g.new_tokens, g.subspaces, g.head_dim);
        let book = self.books.head(self.task(bh).1);
        // SAFETY: rows P.. of the [b, kv head] block belong to the task that calls this (once
        // per call).
        let (codes, values) = unsafe { self.present(bh, p_n..p_n + s_n) };
        match self.inp.transforms {
            None => book.encode_keys(
                s_n,
                |s| self.new_kv(self.inp.key, bh, s),
                &mut codes[..s_n * m],
            ),
            Some(t) => {
                let mut keys = vec![0.0f32; s_n * d];
                for (s, row) in keys.chunks_exact_mut(d).enumerate() {
                    t.key(self.task(bh).1, self.new_kv(self.inp.key, bh, s), row);
                }
                book.encode_keys(s_n, |s| &keys[s * d..(s + 1) * d], &mut codes[..s_n * m]);
            }
        }
        let row = self.value_row();
        for s in 0..s_n {
            V::store_row(
                self.new_kv(self.inp.value, bh, s),
                &mut values[s * row..][..row],
            );
        }
        self.clear_tail(bh);
        self.write_window(bh);
    }

    /// Lookup tables of queries `queries` of task `bh`, `m·K` floats each.
    fn build_tables(&self, bh: usize, queries: Range<usize>, tables: &mut [f32]) {
        let book = self.books.head(self.task(bh).1);
        match self.inp.transforms {
            None => {
                let query = |i: usize| self.query(bh, queries.start + i);
                book.build_luts(queries.len(), query, self.scale, tables);
            }
            Some(t) => {
                let d = self.g.head_dim;
                let mut moved = vec![0.0f32; queries.len() * d];
                for (i, row) in moved.chunks_exact_mut(d).enumerate() {
                    t.query(self.task(bh).1, self.query(bh, queries.start + i), row);
                }
                book.build_luts(
                    queries.len(),
                    |i| &moved[i * d..(i + 1) * d],
                    self.scale,
                    tables,
                );
            }
        }
    }

    /// Whether task `bh` scores its queries through dequantized keys with matrix products
    /// instead of lookup tables: a prefill (many queries) whose queries see few enough tokens on
    /// average that `T·D` multiply-adds per query (in a blocked product) beat building `K·D`
    /// table entries per query; and only when every value the products read is finite (a
    /// weight of 0 times a non-finite value would leak into other queries' sums).
    fn gemm_pays(&self) -> bool {
        prefill_uses_products(&self.g)
    }

    /// The whole of one (batch row, kv head): new tokens, then the queries of its G query heads
    /// chunk by chunk over the full cache; the first chunk also copies the past into the present.
    fn run_head(&self, bh: usize) {
        self.write_new_tokens(bh);
        if self.gemm_pays() && self.run_head_gemm(bh) {
            return;
        }
        let g = &self.g;
        let (t_n, n_queries, d, mk) = (
            g.total_tokens(),
            g.new_tokens * g.group(),
            g.head_dim,
            g.subspaces * g.centroids,
        );
        // SAFETY: task bh alone owns the [b, kv head] block of the present tensors.
        let (codes, values) = unsafe { self.present(bh, 0..t_n) };
        let mut tables = vec![0.0f32; QUERY_CHUNK.min(n_queries) * mk];
        for first in (0..n_queries).step_by(QUERY_CHUNK) {
            let queries = first..(first + QUERY_CHUNK).min(n_queries);
            let tables = &mut tables[..queries.len() * mk];
            self.build_tables(bh, queries.clone(), tables);
            let mut states = vec![OnlineSoftmax::new(d); queries.len()];
            let copy_past = first == 0;
            self.scan(
                bh,
                queries.clone(),
                tables,
                &mut states,
                0..t_n,
                codes,
                values,
                copy_past,
            );
            for (i, state) in queries.zip(&states) {
                // SAFETY: the output row of query i of task bh: D floats only this task writes.
                state.finish(unsafe { self.output_row(bh, i) });
            }
        }
    }

    /// The prefill path of task `bh`: the cache's keys dequantized from their codes (`T × D`,
    /// in the transformed space), its values as float32 (`T × D`), the scores of a chunk of
    /// queries as one product, exact scores (window, `exact_current`) and the mask applied per
    /// query, softmax, and the outputs as a second product. Scores equal the table path's up to
    /// float summation order: a table entry is `scale·q_j·c_j` and a dequantized key holds the
    /// same centroids. Returns false, having only copied the past, when a value is not finite:
    /// the table path then runs, which skips zero-weight rows. The new tokens are already written
    /// (by the caller).
    fn run_head_gemm(&self, bh: usize) -> bool {
        let g = &self.g;
        let (p_n, t_n, m, d) = (g.past_tokens, g.total_tokens(), g.subspaces, g.head_dim);
        let kv = self.task(bh).1;
        let row = self.value_row();
        // SAFETY: task bh alone owns the [b, kv head] block of the present tensors.
        let (codes, values) = unsafe { self.present(bh, 0..t_n) };
        if !self.inp.past_in_present {
            codes[..p_n * m].copy_from_slice(self.past_codes(bh));
            values[..p_n * row].copy_from_slice(self.past_values(bh));
        }
        let mask = self.mask(bh);
        let mut vals = vec![0.0f32; t_n * d];
        for (t, out) in vals.chunks_exact_mut(d).enumerate() {
            if mask.is_none_or(|mk| mk[t] != 0) {
                V::load_row(&values[t * row..][..row], out);
            }
        }
        // A fold without early exit: it vectorizes.
        if !vals.iter().fold(true, |finite, v| finite & v.is_finite()) {
            return false;
        }
        // Keys dequantized from their codes, transposed (`[D][T]`): the score product loads
        // vectors of keys and broadcasts query elements.
        // Rows padded off multiples of 4 KiB: the product reads one line from each of the D rows
        // per tile, and rows 4 KiB apart would share L1 sets.
        let stride = t_n.next_multiple_of(PRODUCT_TILE) + 16;
        let mut keys_t = vec![0.0f32; d * stride];
        self.books
            .head(kv)
            .dequantize_transposed(&codes[..t_n * m], stride, &mut keys_t);
        let n_queries = g.new_tokens * g.group();
        let mut exact_key = vec![0.0f32; d];
        let blocks = GEMM_QUERY_CHUNK.div_ceil(PRODUCT_QUERIES);
        let (mut widths, mut sums) = (vec![0usize; blocks], vec![0.0f32; GEMM_QUERY_CHUNK]);
        let mut scaled_queries = vec![0.0f32; GEMM_QUERY_CHUNK * d];
        let mut out = vec![0.0f32; GEMM_QUERY_CHUNK * d];
        let mut scores = Vec::new();
        for first in (0..n_queries).step_by(GEMM_QUERY_CHUNK) {
            let queries = first..(first + GEMM_QUERY_CHUNK).min(n_queries);
            let n = queries.len();
            // Tokens the chunk's last query sees: the score rows' length; each block of
            // PRODUCT_QUERIES queries is computed up to its own last query's tokens.
            let stop_of = |i: usize| p_n + self.query_of(bh, i).1 + 1;
            let width = stop_of(queries.end - 1);
            for (b, w) in widths
                .iter_mut()
                .enumerate()
                .take(n.div_ceil(PRODUCT_QUERIES))
            {
                *w = stop_of((first + (b + 1) * PRODUCT_QUERIES).min(queries.end) - 1);
            }
            // The scale rides on the queries, as in the lookup tables.
            for (i, q) in queries.clone().zip(scaled_queries.chunks_exact_mut(d)) {
                match self.inp.transforms {
                    None => q.copy_from_slice(self.query(bh, i)),
                    Some(tr) => tr.query(kv, self.query(bh, i), q),
                }
                q.iter_mut().for_each(|x| *x *= self.scale);
            }
            // Score rows hold whole tiles of the product.
            let ld = width.next_multiple_of(PRODUCT_TILE);
            scores.resize(n * ld, 0.0);
            super::simd::query_key_dots(
                &scaled_queries[..n * d],
                n,
                d,
                &keys_t,
                stride,
                &widths,
                &mut scores,
                ld,
            );
            for ((i, block), sum) in queries
                .clone()
                .zip(scores.chunks_exact_mut(ld))
                .zip(sums.iter_mut())
            {
                let s = self.query_of(bh, i).1;
                let stop = p_n + s + 1;
                let query = self.query(bh, i);
                let exact = |key: &[f32]| {
                    self.scale * query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>()
                };
                if self.exact_current {
                    for (s_new, score) in block[p_n..stop].iter_mut().enumerate() {
                        *score = exact(self.new_kv(self.inp.key, bh, s_new));
                    }
                }
                if self.windowed {
                    let recent = (stop).saturating_sub(self.window);
                    for t in (0..stop.min(self.sinks)).chain(recent.max(self.sinks.min(stop))..stop)
                    {
                        self.window_key(bh, t, &mut exact_key);
                        block[t] = exact(&exact_key);
                    }
                }
                if let Some(mask) = mask {
                    for (score, &allowed) in block[..stop].iter_mut().zip(mask) {
                        if allowed == 0 {
                            *score = f32::NEG_INFINITY;
                        }
                    }
                }
                // Weights past the query's tokens are 0 (the output product runs to its block's
                // width).
                block[stop..].fill(0.0);
                let visible = &mut block[..stop];
                let max = super::simd::max(visible);
                if max == f32::NEG_INFINITY {
                    visible.fill(0.0); // no visible token: the output row is zeros
                    *sum = 0.0;
                } else {
                    *sum = super::simd::exp_shifted(visible, max);
                }
            }
            super::simd::weighted_rows(&scores, ld, n, &widths, &vals, d, &mut out[..n * d]);
            for ((i, o), &sum) in queries.zip(out.chunks_exact(d)).zip(&sums) {
                // SAFETY: the output row of query i of task bh: D floats only this task writes.
                let dst = unsafe { self.output_row(bh, i) };
                let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                for (x, &y) in dst.iter_mut().zip(o) {
                    *x = y * inv;
                }
            }
        }
        true
    }

    /// Overwrites the table scores of query `i` of task `bh` for the tokens
    /// `start..start + block.len()` where asked: exact scores for this call's keys, the sinks and
    /// the query's window; `-inf` where the mask disallows.
    fn adjust_scores(
        &self,
        bh: usize,
        i: usize,
        start: usize,
        block: &mut [f32],
        exact_key: &mut [f32],
    ) {
        let p_n = self.g.past_tokens;
        let stop = start + block.len();
        if self.exact_current {
            let query = self.query(bh, i);
            for t in start.max(p_n)..stop {
                let key = self.new_kv(self.inp.key, bh, t - p_n);
                block[t - start] =
                    self.scale * query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        if self.windowed {
            // Sinks, then the query's most recent tokens, scored from full-precision keys.
            let p = p_n + self.query_of(bh, i).1;
            let recent = (p + 1).saturating_sub(self.window).max(start);
            let query = self.query(bh, i);
            for t in (start..stop.min(self.sinks)).chain(recent.max(self.sinks.min(stop))..stop) {
                debug_assert!(window::exact(t, p, self.sinks, self.window));
                self.window_key(bh, t, exact_key);
                block[t - start] = self.scale
                    * query
                        .iter()
                        .zip(&*exact_key)
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
            }
        }
        if let Some(mask) = self.mask(bh) {
            for (score, &allowed) in block.iter_mut().zip(&mask[start..stop]) {
                if allowed == 0 {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Scores cache rows `tokens` of task `bh`'s [b, kv head] block for `queries` (tables and
    /// states in the same order) and folds them into the states. `codes` / `values` are those
    /// rows of the present block; with `copy_past`, the past rows among them are copied there
    /// first — the values by the first group's pass, which reads them anyway (a query of new
    /// token `s` sees rows `..= P + s`, so query 0 sees every past row).
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        bh: usize,
        queries: Range<usize>,
        tables: &[f32],
        states: &mut [OnlineSoftmax],
        tokens: Range<usize>,
        codes: &mut [u8],
        values: &mut [V],
        copy_past: bool,
    ) {
        let g = &self.g;
        let (p_n, m, k, d) = (g.past_tokens, g.subspaces, g.centroids, g.head_dim);
        let base = tokens.start;
        let row = self.value_row();
        // With `past_in_present` every row is read from the present block (nothing to copy).
        let separate = !self.inp.past_in_present;
        let copy_past = copy_past && separate;
        let (past_codes, past_values): (&[u8], &[V]) = if separate {
            (self.past_codes(bh), self.past_values(bh))
        } else {
            (&[], &[])
        };
        // One group of queries (a decode step's G query heads) streams the rows once; more
        // queries take shorter blocks, whose rows stay in L1 while every group reads them.
        let block_len = if queries.len() > GROUP_MAX {
            SHARED_TOKEN_BLOCK
        } else {
            TOKEN_BLOCK
        };
        let mut scores = vec![0.0f32; GROUP_MAX * block_len];
        let mut exact_key = vec![0.0f32; if self.windowed { d } else { 0 }];
        for start in tokens.clone().step_by(block_len) {
            let end = (start + block_len).min(tokens.end);
            // Rows start..past_end come from the past input, the rest from the present block.
            let past_end = if separate {
                end.min(p_n).max(start)
            } else {
                start
            };
            if copy_past && start < past_end {
                codes[(start - base) * m..(past_end - base) * m]
                    .copy_from_slice(&past_codes[start * m..past_end * m]);
            }
            // Queries with the same causal stop (the G query heads of one new token) are scored
            // together, then summed over the block's value rows together: each code and each
            // value row is read (and widened) once per group.
            let stop_of = |i: usize| end.min(p_n + self.query_of(bh, i).1 + 1);
            let mut first = 0;
            while first < queries.len() {
                let stop = stop_of(queries.start + first);
                let mut len = 1;
                while len < GROUP_MAX
                    && first + len < queries.len()
                    && stop_of(queries.start + first + len) == stop
                {
                    len += 1;
                }
                let group = first..first + len;
                first += len;
                if stop <= start {
                    continue; // causal: no query of this group sees these rows (nor the past)
                }
                let copying = copy_past && group.start == 0 && start < past_end;
                adc_scores_group(
                    &tables[group.start * m * k..group.end * m * k],
                    &codes[(start - base) * m..(stop - base) * m],
                    k,
                    m,
                    &mut scores,
                    block_len,
                );
                let mut any = false;
                for (j, n) in group.clone().enumerate() {
                    let block = &mut scores[j * block_len..][..stop - start];
                    self.adjust_scores(bh, queries.start + n, start, block, &mut exact_key);
                    any |= states[n].absorb_scores(block);
                }
                let weights: [&[f32]; GROUP_MAX] = std::array::from_fn(|j| {
                    if j < len {
                        &scores[j * block_len..][..stop - start]
                    } else {
                        &[]
                    }
                });
                let states = &mut states[group];
                let n_past = past_end - start;
                if (any || copying) && n_past > 0 {
                    // Past rows come from the past input (the copy's source), new ones from the
                    // present, where this call's tokens were written first.
                    let dst =
                        copying.then(|| &mut values[(start - base) * row..(past_end - base) * row]);
                    let src = &past_values[start * row..past_end * row];
                    let w = weights.map(|w| &w[..w.len().min(n_past)]);
                    OnlineSoftmax::accumulate_group(states, &w[..len], src, dst, self.stream);
                }
                if any && stop > past_end {
                    let rows = &values[(past_end - base) * row..(stop - base) * row];
                    let w = weights.map(|w| &w[w.len().min(n_past)..]);
                    OnlineSoftmax::accumulate_group(states, &w[..len], rows, None, false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_only_when_heads_cannot_fill_the_workers() {
        assert_eq!(token_splits(12, 4096, 2), 1); // 12 tasks keep 2 workers busy
        assert_eq!(token_splits(12, 4096, 8), 2);
        assert_eq!(token_splits(1, 4096, 8), 4); // capped by SPLIT_MIN_TOKENS
        assert_eq!(token_splits(1, 1000, 8), 1);
        assert_eq!(token_splits(1, 1 << 20, 1), 1);
    }

    #[test]
    fn token_ranges_cover_the_cache_in_whole_blocks() {
        for (tokens, splits) in [(4096, 4), (5001, 4), (1025, 2), (300, 3), (256, 2)] {
            let ranges = token_ranges(tokens, splits);
            assert!(ranges.len() <= splits && !ranges.is_empty());
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, tokens);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[0].end % TOKEN_BLOCK, 0);
            }
        }
    }
}
