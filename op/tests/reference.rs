//! Kernels against a naive f64 reference written here (it calls no kernel code), on random inputs.
//!
//! Error bound: every output element differs from the f64 reference by at most 1e-4. Inputs are
//! drawn so that values lie in [-1, 1] and attention scores stay within about ±10, where f32
//! rounding of sums over at most 305 tokens and 64 dimensions stays below 1e-5; the bound leaves a
//! 10x margin. Float16 values are compared against a reference that rounds them to f16 the same way
//! (IEEE round-to-nearest, through the `half` crate), so the bound covers the kernel's arithmetic,
//! not the storage format.

use half::f16;
use lookat_op::kernels::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, KeyTransforms,
};
use lookat_op::{Geometry, Layout, LookatError, ParallelFor, Serial, ValueElem};

const TOLERANCE: f64 = 1e-4;

/// SplitMix64: small, seeded, good enough for test data.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * amp).collect()
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    /// kv heads; the query heads are `h · group`.
    h: usize,
    d: usize,
    p: usize,
    s: usize,
    m: usize,
    k: usize,
    masked: bool,
    exact_current: bool,
    /// Query heads per kv head (1: multi-head attention).
    group: usize,
    /// `[B, H, S, D]` inputs instead of `[B, S, H·D]`.
    head_major: bool,
    /// Full-precision key window: sink tokens and recent tokens per query (0, 0: none).
    sinks: usize,
    window: usize,
}

struct Data {
    /// Query heads per kv head and the input layout, as the reference reads them.
    group: usize,
    head_major: bool,
    sinks: usize,
    window: usize,
    /// Key and query transforms `[H_kv, D, D]` (A, B), when the case uses them.
    transforms: Option<(Vec<f32>, Vec<f32>)>,
    /// Full-precision keys of the past tokens `[B, H_kv, P, D]` (their codes are random: the op
    /// never relates the two), from which the past key window is taken.
    past_keys: Vec<f32>,
    g: Geometry,
    query: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
    past_codes: Vec<u8>,
    past_value: Vec<f32>,
    mask: Option<Vec<i64>>,
    codebooks: Vec<f32>,
}

fn make_data(c: Case, rng: &mut Rng) -> Data {
    let (kv_e, q_e) = (c.h * c.d, c.h * c.group * c.d);
    let t = c.p + c.s;
    // Left padding: batch row b has b*3 padded positions (capped so each row keeps real tokens).
    let mask = c.masked.then(|| {
        (0..c.b)
            .flat_map(|b| {
                let pad = (b * 3).min(t.saturating_sub(1));
                (0..t).map(move |i| i64::from(i >= pad))
            })
            .collect()
    });
    Data {
        group: c.group,
        head_major: c.head_major,
        sinks: c.sinks,
        window: c.window,
        transforms: None,
        past_keys: rng.vec(c.b * c.h * c.p * c.d, 1.5),
        g: Geometry {
            batch: c.b,
            heads: c.h * c.group,
            kv_heads: c.h,
            head_dim: c.d,
            new_tokens: c.s,
            past_tokens: c.p,
            subspaces: c.m,
            centroids: c.k,
            layout: if c.head_major {
                Layout::HeadMajor
            } else {
                Layout::TokenMajor
            },
            capacity: None,
        },
        query: rng.vec(c.b * c.s * q_e, 1.5),
        key: rng.vec(c.b * c.s * kv_e, 1.5),
        value: rng.vec(c.b * c.s * kv_e, 1.0),
        past_codes: (0..c.b * c.h * c.p * c.m)
            .map(|_| rng.below(c.k) as u8)
            .collect(),
        past_value: rng.vec(c.b * c.h * c.p * c.d, 1.0),
        mask,
        codebooks: rng.vec(c.h * c.m * c.k * (c.d / c.m), 1.5),
    }
}

impl Data {
    /// Tokens a key window of a cache of `n` tokens holds, in order: the sinks, then the most
    /// recent `window` (written out here, not with the contract's helpers).
    fn window_tokens(&self, n: usize) -> Vec<usize> {
        let mut tokens: Vec<usize> = (0..n.min(self.sinks)).collect();
        let recent_from = n.saturating_sub(self.window).max(self.sinks);
        tokens.extend(recent_from..n);
        tokens
    }

    /// `x·M` for kv head `kv` of transform `which` (0: A for keys, 1: B for queries), in f64;
    /// `x` itself without transforms.
    fn transformed(&self, x: &[f32], kv: usize, which: usize) -> Vec<f64> {
        let d = x.len();
        match &self.transforms {
            None => x.iter().map(|&v| v as f64).collect(),
            Some(t) => {
                let m = if which == 0 { &t.0 } else { &t.1 };
                (0..d)
                    .map(|j| {
                        (0..d)
                            .map(|i| x[i] as f64 * m[(kv * d + i) * d + j] as f64)
                            .sum()
                    })
                    .collect()
            }
        }
    }

    fn windowed(&self) -> bool {
        self.sinks + self.window > 0
    }

    /// The past key window `[B, H_kv, rows, D]` in the value type's precision.
    fn past_window<V: ValueElem>(&self) -> Vec<V> {
        if !self.windowed() {
            return vec![];
        }
        let g = &self.g;
        let (p, d) = (g.past_tokens, g.head_dim);
        let mut out = vec![];
        for bh in 0..g.batch * g.kv_heads {
            for t in self.window_tokens(p) {
                out.extend(
                    self.past_keys[(bh * p + t) * d..][..d]
                        .iter()
                        .map(|&k| V::from_f32(k)),
                );
            }
        }
        out
    }

    /// Offset of (batch b, head h of `heads`, new token s) in a query/key/value input, computed
    /// here from the layout (not with the kernel's Geometry helpers).
    fn row(&self, b: usize, h: usize, heads: usize, s: usize) -> usize {
        let (s_n, d) = (self.g.new_tokens, self.g.head_dim);
        if self.head_major {
            ((b * heads + h) * s_n + s) * d
        } else {
            (b * s_n + s) * heads * d + h * d
        }
    }
    fn query_row(&self, b: usize, h: usize, s: usize) -> &[f32] {
        let heads = self.g.kv_heads * self.group;
        &self.query[self.row(b, h, heads, s)..][..self.g.head_dim]
    }
    fn key_row(&self, b: usize, kv: usize, s: usize) -> &[f32] {
        &self.key[self.row(b, kv, self.g.kv_heads, s)..][..self.g.head_dim]
    }
    fn value_row(&self, b: usize, kv: usize, s: usize) -> &[f32] {
        &self.value[self.row(b, kv, self.g.kv_heads, s)..][..self.g.head_dim]
    }
}

struct Run<V: ValueElem> {
    output: Vec<f32>,
    codes: Vec<u8>,
    values: Vec<V>,
    window: Vec<V::Window>,
}

/// The past value cache `[B, H_kv, P, D + ROW_EXTRA]` in type `V`: the values converted, or for
/// int8 rows quantized here (absmax scale per row, written independently of the kernels).
fn past_rows<V: ValueElem>(data: &Data) -> Vec<V> {
    let d = data.g.head_dim;
    if V::ROW_EXTRA == 0 {
        return data.past_value.iter().map(|&v| V::from_f32(v)).collect();
    }
    let mut out = vec![];
    for row in data.past_value.chunks_exact(d) {
        let amax = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = amax / 127.0;
        out.extend(row.iter().map(|&x| V::from_f32((x / scale).round())));
        out.extend(scale.to_le_bytes().map(|b| V::from_f32(b as i8 as f32)));
    }
    out
}

fn run_kernel<V: ValueElem>(
    data: &Data,
    opts: &AttentionOptions,
    par: &dyn ParallelFor,
) -> Result<Run<V>, LookatError> {
    let g = &data.g;
    let t = g.total_tokens();
    let past_value: Vec<V> = past_rows::<V>(data);
    let past_window = data.past_window::<V::Window>();
    let transforms = data
        .transforms
        .as_ref()
        .map(|(a, b)| KeyTransforms::new(a, b, g.kv_heads, g.head_dim).expect("transform sizes"));
    let window_rows = if data.windowed() {
        data.window_tokens(t).len()
    } else {
        0
    };
    let mut run = Run {
        output: vec![f32::NAN; g.batch * g.new_tokens * g.hidden()],
        codes: vec![0xEE; g.batch * g.kv_heads * t * g.subspaces],
        values: vec![V::from_f32(f32::NAN); g.batch * g.kv_heads * t * (g.head_dim + V::ROW_EXTRA)],
        window: vec![
            V::Window::from_f32(f32::NAN);
            g.batch * g.kv_heads * window_rows * g.head_dim
        ],
    };
    lookat_attention(
        g,
        opts,
        &AttentionInputs {
            query: &data.query,
            key: &data.key,
            value: &data.value,
            past_key_codes: &data.past_codes,
            past_value: &past_value,
            past_in_present: false,
            attention_mask: data.mask.as_deref(),
            codebooks: &data.codebooks,
            prepared: None,
            past_key_window: &past_window,
            transforms: transforms.as_ref(),
        },
        AttentionOutputs {
            output: &mut run.output,
            present_key_codes: &mut run.codes,
            present_value: &mut run.values,
            present_key_window: &mut run.window,
        },
        par,
    )?;
    Ok(run)
}

fn subvector_dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum()
}

/// Checks the present codes: past codes copied, each new code the nearest centroid within the
/// documented tie bound (f64 distances).
fn check_codes(data: &Data, codes: &[u8]) {
    let g = &data.g;
    let (t_n, m, k, sub) = (g.total_tokens(), g.subspaces, g.centroids, g.sub_dim());
    for b in 0..g.batch {
        for h in 0..g.kv_heads {
            let bh = b * g.kv_heads + h;
            assert_eq!(
                &codes[bh * t_n * m..][..g.past_tokens * m],
                &data.past_codes[bh * g.past_tokens * m..][..g.past_tokens * m],
                "past codes not copied for b={b} kv head {h}"
            );
            for s in 0..g.new_tokens {
                let key: Vec<f32> = data
                    .transformed(data.key_row(b, h, s), h, 0)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                for j in 0..m {
                    let x = &key[j * sub..][..sub];
                    let cents = &data.codebooks[(h * m + j) * k * sub..][..k * sub];
                    let chosen = codes[(bh * t_n + g.past_tokens + s) * m + j];
                    assert!((chosen as usize) < k);
                    assert!(
                        within_tie_bound(x, cents, chosen).0,
                        "code of b={b} kv head {h} s={s} j={j} is {chosen}, not the nearest within the bound"
                    );
                }
            }
        }
    }
}

/// Naive f64 attention over the given present codes (scores = Σ_j scale·q_j·C[code_j]) or, for
/// `exact_current`, the raw keys of the new tokens.
fn reference_output(
    data: &Data,
    codes: &[u8],
    opts: &AttentionOptions,
    round_f16: bool,
    stored_values: Option<&[f64]>,
) -> Vec<f64> {
    let g = &data.g;
    let (t_n, m, k, sub, d, e) = (
        g.total_tokens(),
        g.subspaces,
        g.centroids,
        g.sub_dim(),
        g.head_dim,
        g.hidden(),
    );
    let scale = opts.scale.map_or(1.0 / (d as f64).sqrt(), f64::from);
    let store = |v: f32| -> f64 {
        if round_f16 {
            f16::from_f32(v).to_f64()
        } else {
            v as f64
        }
    };
    let mut out = vec![0.0f64; g.batch * g.new_tokens * e];
    for b in 0..g.batch {
        for h in 0..g.heads {
            // Query head h reads kv head h / G.
            let kv = h / data.group;
            let bh = b * g.kv_heads + kv;
            let value_at = |t: usize, i: usize| -> f64 {
                if let Some(v) = stored_values {
                    v[(bh * t_n + t) * d + i]
                } else if t < g.past_tokens {
                    store(data.past_value[(bh * g.past_tokens + t) * d + i])
                } else {
                    store(data.value_row(b, kv, t - g.past_tokens)[i])
                }
            };
            for s in 0..g.new_tokens {
                let q = data.query_row(b, h, s);
                let q_table = data.transformed(q, kv, 1);
                let visible = g.past_tokens + s + 1;
                let allowed = |t: usize| data.mask.as_ref().is_none_or(|mk| mk[b * t_n + t] != 0);
                let mut scores = vec![f64::NEG_INFINITY; visible];
                for (t, score) in scores.iter_mut().enumerate() {
                    if !allowed(t) {
                        continue;
                    }
                    let mut acc = 0.0f64;
                    let position = g.past_tokens + s;
                    let in_window = t < data.sinks || position - t < data.window;
                    if in_window {
                        // The full-precision key, stored in the value type's precision.
                        let key: Vec<f64> = if t >= g.past_tokens {
                            data.key_row(b, kv, t - g.past_tokens)
                                .iter()
                                .map(|&k| store(k))
                                .collect()
                        } else {
                            data.past_keys[(bh * g.past_tokens + t) * d..][..d]
                                .iter()
                                .map(|&k| store(k))
                                .collect()
                        };
                        for i in 0..d {
                            acc += q[i] as f64 * key[i];
                        }
                    } else if opts.exact_current && t >= g.past_tokens {
                        let key = data.key_row(b, kv, t - g.past_tokens);
                        for i in 0..d {
                            acc += q[i] as f64 * key[i] as f64;
                        }
                    } else {
                        for j in 0..m {
                            let c = codes[(bh * t_n + t) * m + j] as usize;
                            let cent = &data.codebooks[((kv * m + j) * k + c) * sub..][..sub];
                            for i in 0..sub {
                                acc += q_table[j * sub + i] * cent[i] as f64;
                            }
                        }
                    }
                    *score = acc * scale;
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue; // no visible token: output stays 0
                }
                let w: Vec<f64> = scores.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for i in 0..d {
                    let acc: f64 = (0..visible).map(|t| w[t] * value_at(t, i)).sum();
                    out[(b * g.new_tokens + s) * e + h * d + i] = acc / sum;
                }
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

fn check_case<V: ValueElem>(c: Case, rng: &mut Rng, round_f16: bool) {
    check_case_on::<V>(c, rng, round_f16, &Serial)
}

fn check_case_on<V: ValueElem>(c: Case, rng: &mut Rng, round_f16: bool, par: &dyn ParallelFor) {
    let data = make_data(c, rng);
    let opts = AttentionOptions {
        scale: None,
        exact_current: c.exact_current,
        sinks: c.sinks,
        window: c.window,
    };
    let run = run_kernel::<V>(&data, &opts, par).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    // The present window: the sinks and most recent tokens of the present cache, in order.
    if data.windowed() {
        let (t_n, d) = (data.g.total_tokens(), data.g.head_dim);
        let tokens = data.window_tokens(t_n);
        for b in 0..data.g.batch {
            for kv in 0..data.g.kv_heads {
                let bh = b * data.g.kv_heads + kv;
                for (r, &t) in tokens.iter().enumerate() {
                    let want: Vec<f32> = if t >= data.g.past_tokens {
                        data.key_row(b, kv, t - data.g.past_tokens).to_vec()
                    } else {
                        data.past_keys[(bh * data.g.past_tokens + t) * d..][..d].to_vec()
                    };
                    for (i, &k) in want.iter().enumerate() {
                        let got = run.window[((bh * tokens.len()) + r) * d + i];
                        assert_eq!(
                            got.to_f32(),
                            V::from_f32(k).to_f32(),
                            "{c:?} present window row {r}"
                        );
                    }
                }
            }
        }
    }
    check_codes(&data, &run.codes);
    let reference = reference_output(&data, &run.codes, &opts, round_f16, None);
    let err = max_abs_diff(&run.output, &reference);
    assert!(err <= TOLERANCE, "{c:?} ({}): max |Δ| = {err:e}", V::NAME);
    // Present values: past copied, new appended, both in storage precision.
    let g = &data.g;
    for b in 0..g.batch {
        for h in 0..g.kv_heads {
            let bh = b * g.kv_heads + h;
            for t in 0..g.total_tokens() {
                for i in 0..g.head_dim {
                    let want = if t < g.past_tokens {
                        data.past_value[(bh * g.past_tokens + t) * g.head_dim + i]
                    } else {
                        data.value_row(b, h, t - g.past_tokens)[i]
                    };
                    let got = run.values[(bh * g.total_tokens() + t) * g.head_dim + i];
                    assert_eq!(
                        got.to_f32(),
                        V::from_f32(want).to_f32(),
                        "{c:?} present value"
                    );
                }
            }
        }
    }
}

#[test]
fn matches_f64_reference_over_the_issue_grid() {
    let mut rng = Rng(0x10c4a7);
    let mut cases = 0;
    for b in [1, 3] {
        for h in [1, 4, 12] {
            for p in [0, 1, 17, 300] {
                for s in [1, 5] {
                    for m in [1, 2, 4, 8, 16, 32, 64] {
                        for k in [16, 256] {
                            for masked in [false, true] {
                                let c = Case {
                                    b,
                                    h,
                                    d: 64,
                                    p,
                                    s,
                                    m,
                                    k,
                                    masked,
                                    exact_current: false,
                                    group: 1,
                                    head_major: false,
                                    sinks: 0,
                                    window: 0,
                                };
                                // Alternate the value type so both are covered on the whole grid.
                                if (cases % 2) == 0 {
                                    check_case::<f32>(c, &mut rng, false);
                                } else {
                                    check_case::<f16>(c, &mut rng, true);
                                }
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 3 * 4 * 2 * 7 * 2 * 2);
}

/// Grouped-query attention (SmolLM2's 9 query / 3 kv heads, multi-query, 2 per kv head) in both
/// input layouts, prefill and decode, masks and exact current keys, both value types: against
/// the f64 reference, which maps query head h to kv head h / G on its own.
#[test]
fn grouped_query_attention_in_both_layouts() {
    let mut rng = Rng(0x6a);
    let mut cases = 0;
    for (b, kv, group) in [(1, 3, 3), (2, 1, 4), (2, 2, 2), (1, 2, 1)] {
        for head_major in [false, true] {
            for (p, s) in [(0, 7), (33, 1), (300, 5), (20, 19)] {
                for (m, k) in [(4, 256), (8, 16), (64, 256)] {
                    let c = Case {
                        b,
                        h: kv,
                        d: 64,
                        p,
                        s,
                        m,
                        k,
                        masked: cases % 3 == 0,
                        exact_current: cases % 5 == 0,
                        group,
                        head_major,
                        sinks: 0,
                        window: 0,
                    };
                    check_case::<f32>(c, &mut rng, false);
                    check_case::<f16>(c, &mut rng, true);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 4 * 2 * 4 * 3);
}

/// Decode on few kv heads with several query heads each takes the split (flash-decoding) path:
/// every query of a group merges its token ranges exactly.
#[test]
fn grouped_query_split_decode_matches_reference() {
    let mut rng = Rng(0x5b);
    for (kv, group, p, s, head_major) in [
        (1, 3, 4000, 1, true),
        (3, 3, 2500, 1, false),
        (1, 4, 2100, 3, true),
    ] {
        let c = Case {
            b: 1,
            h: kv,
            d: 64,
            p,
            s,
            m: 4,
            k: 256,
            masked: true,
            exact_current: s > 1,
            group,
            head_major,
            sinks: 0,
            window: 0,
        };
        check_case_on::<f32>(c, &mut rng, false, &Threads(4));
        check_case_on::<f16>(c, &mut rng, true, &Threads(3));
    }
}

#[test]
fn both_value_types_and_exact_current_on_a_smaller_grid() {
    let mut rng = Rng(7);
    for (p, s, m, d, k, masked) in [
        (0, 5, 4, 64, 256, true),
        (17, 1, 8, 64, 16, false),
        (300, 5, 64, 64, 256, true),
        (9, 3, 16, 16, 64, true),
        (4, 2, 3, 12, 5, false),
    ] {
        for exact_current in [false, true] {
            let c = Case {
                b: 3,
                h: 4,
                d,
                p,
                s,
                m,
                k,
                masked,
                exact_current,
                group: 1,
                head_major: false,
                sinks: 0,
                window: 0,
            };
            check_case::<f32>(c, &mut rng, false);
            check_case::<f16>(c, &mut rng, true);
        }
    }
}

/// Keys that are exact concatenations of centroids lose nothing to quantization: the op must then
/// equal exact softmax attention computed on the keys themselves.
#[test]
fn lossless_when_keys_are_centroids() {
    let mut rng = Rng(99);
    for (b, h, p, s, m, k, masked) in [
        (1, 4, 0, 5, 4, 256, false),
        (3, 12, 17, 1, 8, 16, true),
        (2, 4, 300, 5, 64, 256, true),
        (1, 1, 1, 1, 1, 256, false),
        (2, 4, 40, 5, 2, 16, false),
    ] {
        let d = 64;
        let c = Case {
            b,
            h,
            d,
            p,
            s,
            m,
            k,
            masked,
            exact_current: false,
            group: 1,
            head_major: false,
            sinks: 0,
            window: 0,
        };
        let mut data = make_data(c, &mut rng);
        let sub = d / m;
        let e = h * d;
        // Every past key is a random choice of centroids; keep the full keys for the reference.
        let mut past_keys = vec![0.0f32; b * h * p * d];
        for bh in 0..b * h {
            let head = bh % h;
            for t in 0..p {
                for j in 0..m {
                    let code = data.past_codes[(bh * p + t) * m + j] as usize;
                    let cent = &data.codebooks[((head * m + j) * k + code) * sub..][..sub];
                    past_keys[(bh * p + t) * d + j * sub..][..sub].copy_from_slice(cent);
                }
            }
        }
        // New keys too.
        for bs in 0..b * s {
            for head in 0..h {
                for j in 0..m {
                    let code = rng.below(k);
                    let cent = data.codebooks[((head * m + j) * k + code) * sub..][..sub].to_vec();
                    data.key[bs * e + head * d + j * sub..][..sub].copy_from_slice(&cent);
                }
            }
        }
        let run = run_kernel::<f32>(&data, &AttentionOptions::default(), &Serial).unwrap();
        // Exact attention, f64, on real keys.
        let scale = 1.0 / (d as f64).sqrt();
        let t_n = p + s;
        for bi in 0..b {
            for head in 0..h {
                let bh = bi * h + head;
                let key_at = |t: usize, i: usize| -> f64 {
                    if t < p {
                        past_keys[(bh * p + t) * d + i] as f64
                    } else {
                        data.key[(bi * s + t - p) * e + head * d + i] as f64
                    }
                };
                let value_at = |t: usize, i: usize| -> f64 {
                    if t < p {
                        data.past_value[(bh * p + t) * d + i] as f64
                    } else {
                        data.value[(bi * s + t - p) * e + head * d + i] as f64
                    }
                };
                for si in 0..s {
                    let q = &data.query[(bi * s + si) * e + head * d..][..d];
                    let visible: Vec<usize> = (0..=p + si)
                        .filter(|&t| data.mask.as_ref().is_none_or(|mk| mk[bi * t_n + t] != 0))
                        .collect();
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&t| (0..d).map(|i| q[i] as f64 * key_at(t, i)).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for i in 0..d {
                        let want: f64 = visible
                            .iter()
                            .zip(&w)
                            .map(|(&t, wt)| wt * value_at(t, i))
                            .sum::<f64>()
                            / sum;
                        let got = run.output[(bi * s + si) * e + head * d + i] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5,
                            "lossless case b={b} h={h} p={p} s={s} m={m} k={k}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Runs tasks on scoped threads in a scrambled order.
struct Threads(usize);
impl ParallelFor for Threads {
    fn parallelism(&self) -> usize {
        self.0
    }

    fn run(&self, tasks: usize, work: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|scope| {
            for worker in 0..self.0 {
                scope.spawn(move || {
                    (0..tasks)
                        .rev()
                        .filter(|t| t % self.0 == worker)
                        .for_each(work);
                });
            }
        });
    }
}

#[test]
fn threaded_runs_equal_serial_runs_bit_for_bit() {
    let mut rng = Rng(3);
    let c = Case {
        b: 3,
        h: 12,
        d: 64,
        p: 50,
        s: 5,
        m: 8,
        k: 256,
        masked: true,
        exact_current: false,
        group: 1,
        head_major: false,
        sinks: 0,
        window: 0,
    };
    let data = make_data(c, &mut rng);
    let opts = AttentionOptions::default();
    let serial = run_kernel::<f16>(&data, &opts, &Serial).unwrap();
    for threads in [2, 3, 8] {
        let par = run_kernel::<f16>(&data, &opts, &Threads(threads)).unwrap();
        assert_eq!(serial.output, par.output);
        assert_eq!(serial.codes, par.codes);
        assert_eq!(serial.values, par.values);
    }
}

/// Shared max-length buffers (capacity C > P + S, the valid length from `past_sequence_length`):
/// appended into a separate present or in place (the present *is* the past buffer), the output
/// and every valid cache row equal the compact call's bit for bit; a separate present's rows
/// after P + S are zeros, an in-place present keeps whatever its tail held.
#[test]
fn shared_buffers_equal_compact_caches_bit_for_bit() {
    let mut rng = Rng(0x5ba7ed);
    let base = Case {
        b: 2,
        h: 3,
        d: 16,
        p: 40,
        s: 1,
        m: 4,
        k: 256,
        masked: true,
        exact_current: false,
        group: 3,
        head_major: true,
        sinks: 0,
        window: 0,
    };
    let cases = [
        (base, 1),
        (
            Case {
                s: 5,
                sinks: 2,
                window: 8,
                ..base
            },
            2,
        ),
        (
            Case {
                s: 3,
                exact_current: true,
                head_major: false,
                group: 1,
                masked: false,
                ..base
            },
            3,
        ),
        (
            Case {
                p: 0,
                s: 6,
                k: 16,
                ..base
            },
            2,
        ),
        (
            Case {
                s: 0,
                sinks: 1,
                window: 4,
                ..base
            },
            1,
        ),
        // One long head on four workers: the split (flash-decoding) path.
        (
            Case {
                b: 1,
                h: 1,
                p: 2100,
                sinks: 4,
                window: 64,
                ..base
            },
            4,
        ),
    ];
    for (c, threads) in cases {
        check_shared::<f32>(c, &mut rng, &Threads(threads));
        check_shared::<f16>(c, &mut rng, &Threads(threads));
        check_shared::<i8>(c, &mut rng, &Threads(threads));
    }
}

fn check_shared<V: ValueElem>(c: Case, rng: &mut Rng, par: &dyn ParallelFor) {
    let data = make_data(c, rng);
    let opts = AttentionOptions {
        scale: None,
        exact_current: c.exact_current,
        sinks: c.sinks,
        window: c.window,
    };
    let compact = run_kernel::<V>(&data, &opts, par).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let g = data.g;
    let (p, t, m, d) = (g.past_tokens, g.total_tokens(), g.subspaces, g.head_dim);
    let cap = t + 7;
    let shared = Geometry {
        capacity: Some(cap),
        ..g
    };
    let blocks = g.batch * g.kv_heads;
    // Capacity buffers: each block's P past rows, then rows a previous use left behind.
    let (junk_code, junk_value) = (0xA5u8, V::from_f32(9.5));
    let mut past_codes = vec![junk_code; blocks * cap * m];
    let row = d + V::ROW_EXTRA;
    let mut past_values = vec![junk_value; blocks * cap * row];
    let compact_past = past_rows::<V>(&data);
    for bh in 0..blocks {
        past_codes[bh * cap * m..][..p * m]
            .copy_from_slice(&data.past_codes[bh * p * m..][..p * m]);
        past_values[bh * cap * row..][..p * row]
            .copy_from_slice(&compact_past[bh * p * row..][..p * row]);
    }
    let past_window = data.past_window::<V::Window>();
    let transforms = None;
    for in_place in [false, true] {
        let what = format!("{c:?} ({}, in place: {in_place})", V::NAME);
        let mut output = vec![f32::NAN; compact.output.len()];
        let mut window = vec![V::Window::from_f32(f32::NAN); compact.window.len()];
        let (mut codes, mut values) = if in_place {
            (past_codes.clone(), past_values.clone())
        } else {
            (
                vec![0xEE; past_codes.len()],
                vec![V::from_f32(f32::NAN); past_values.len()],
            )
        };
        lookat_attention(
            &shared,
            &opts,
            &AttentionInputs {
                query: &data.query,
                key: &data.key,
                value: &data.value,
                past_key_codes: if in_place { &[] } else { &past_codes },
                past_value: if in_place { &[] } else { &past_values },
                past_in_present: in_place,
                attention_mask: data.mask.as_deref(),
                codebooks: &data.codebooks,
                prepared: None,
                past_key_window: &past_window,
                transforms,
            },
            AttentionOutputs {
                output: &mut output,
                present_key_codes: &mut codes,
                present_value: &mut values,
                present_key_window: &mut window,
            },
            par,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let value_bits = |v: &[V]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
        let window_bits =
            |v: &[V::Window]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&output), bits(&compact.output), "{what}: output");
        assert_eq!(
            window_bits(&window),
            window_bits(&compact.window),
            "{what}: window"
        );
        for bh in 0..blocks {
            assert_eq!(
                &codes[bh * cap * m..][..t * m],
                &compact.codes[bh * t * m..][..t * m],
                "{what}: codes of block {bh}"
            );
            assert_eq!(
                value_bits(&values[bh * cap * row..][..t * row]),
                value_bits(&compact.values[bh * t * row..][..t * row]),
                "{what}: values of block {bh}"
            );
            let (tail_code, tail_value) = if in_place {
                (junk_code, junk_value.to_f32())
            } else {
                (0, 0.0)
            };
            assert!(
                codes[bh * cap * m..][t * m..cap * m]
                    .iter()
                    .all(|&x| x == tail_code),
                "{what}: code tail of block {bh}"
            );
            assert!(
                values[bh * cap * row..][t * row..cap * row]
                    .iter()
                    .all(|x| x.to_f32() == tail_value),
                "{what}: value tail of block {bh}"
            );
        }
    }
}

/// Int8 value rows against the f64 reference: each new row holds `round(v / s)` with
/// `s = max|v| / 127` in its last four bytes (checked here, to within a rounding tie), past rows
/// pass through bit for bit, and the output is attention over the rows as stored (decoded here),
/// with float16 keys in the window.
#[test]
fn int8_value_rows_match_reference() {
    let mut rng = Rng(0x1e8);
    let base = Case {
        b: 2,
        h: 3,
        d: 64,
        p: 37,
        s: 1,
        m: 8,
        k: 256,
        masked: true,
        exact_current: false,
        group: 3,
        head_major: true,
        sinks: 0,
        window: 0,
    };
    let cases = [
        (base, 1),
        (
            Case {
                s: 6,
                sinks: 2,
                window: 8,
                d: 40,
                m: 4,
                ..base
            },
            2,
        ),
        (
            Case {
                s: 3,
                exact_current: true,
                group: 1,
                head_major: false,
                ..base
            },
            3,
        ),
        (
            Case {
                b: 1,
                h: 1,
                p: 2100,
                sinks: 4,
                window: 64,
                masked: false,
                ..base
            },
            4,
        ),
    ];
    for (c, threads) in cases {
        let data = make_data(c, &mut rng);
        let opts = AttentionOptions {
            scale: None,
            exact_current: c.exact_current,
            sinks: c.sinks,
            window: c.window,
        };
        let run = run_kernel::<i8>(&data, &opts, &Threads(threads))
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        check_codes(&data, &run.codes);
        let g = &data.g;
        let (t_n, p_n, d) = (g.total_tokens(), g.past_tokens, g.head_dim);
        let stride = d + 4;
        let past = past_rows::<i8>(&data);
        let mut decoded = vec![0.0f64; g.batch * g.kv_heads * t_n * d];
        for b in 0..g.batch {
            for kv in 0..g.kv_heads {
                let bh = b * g.kv_heads + kv;
                for t in 0..t_n {
                    let row = &run.values[(bh * t_n + t) * stride..][..stride];
                    let scale = f32::from_le_bytes(
                        [row[d], row[d + 1], row[d + 2], row[d + 3]].map(|x| x as u8),
                    );
                    if t < p_n {
                        assert_eq!(
                            row,
                            &past[(bh * p_n + t) * stride..][..stride],
                            "{c:?}: past row {t}"
                        );
                    } else {
                        let x = data.value_row(b, kv, t - p_n);
                        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        assert_eq!(scale, amax / 127.0, "{c:?}: scale of row {t}");
                        for (&q, &v) in row[..d].iter().zip(x) {
                            assert!(
                                (q as f32 - v / scale).abs() <= 0.5 + 1e-3,
                                "{c:?}: {q} for {v}"
                            );
                        }
                    }
                    for i in 0..d {
                        decoded[(bh * t_n + t) * d + i] = scale as f64 * row[i] as f64;
                    }
                }
            }
        }
        let reference = reference_output(&data, &run.codes, &opts, true, Some(&decoded));
        let err = max_abs_diff(&run.output, &reference);
        assert!(err <= TOLERANCE, "{c:?} (int8): max |Δ| = {err:e}");
    }
}

/// The prefill path (keys dequantized from their codes, scores and outputs as matrix products)
/// against the f64 reference, on cases that take it (checked): grouped queries, both layouts,
/// windows, `exact_current`, masks, transforms, a past, each value type. A NaN in a padded
/// value row must not reach any output (the path hands the task to the tables, which skip
/// zero-weight rows).
#[test]
fn prefill_products_match_reference() {
    use lookat_op::kernels::prefill_uses_products;
    let mut rng = Rng(0x9e);
    let base = Case {
        b: 2,
        h: 2,
        d: 64,
        p: 0,
        s: 40,
        m: 8,
        k: 256,
        masked: true,
        exact_current: false,
        group: 1,
        head_major: false,
        sinks: 0,
        window: 0,
    };
    let cases = [
        (base, false),
        (
            Case {
                group: 3,
                head_major: true,
                sinks: 2,
                window: 9,
                ..base
            },
            false,
        ),
        (
            Case {
                p: 30,
                s: 70,
                exact_current: true,
                masked: false,
                ..base
            },
            true,
        ),
        (
            Case {
                s: 33,
                m: 4,
                k: 100,
                d: 48,
                group: 2,
                ..base
            },
            true,
        ),
    ];
    for (c, transforms) in cases {
        let mut data = make_data(c, &mut rng);
        assert!(
            prefill_uses_products(&data.g),
            "{c:?} should take the product path"
        );
        if transforms {
            let n = c.h * c.d * c.d;
            data.transforms = Some((rng.vec(n, 0.3), rng.vec(n, 0.3)));
        }
        let opts = AttentionOptions {
            scale: None,
            exact_current: c.exact_current,
            sinks: c.sinks,
            window: c.window,
        };
        for threads in [1, 3] {
            let run = run_kernel::<f32>(&data, &opts, &Threads(threads))
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            check_codes(&data, &run.codes);
            let reference = reference_output(&data, &run.codes, &opts, false, None);
            let err = max_abs_diff(&run.output, &reference);
            assert!(
                err <= TOLERANCE,
                "{c:?} threads {threads}: max |Δ| = {err:e}"
            );
            let run16 = run_kernel::<f16>(&data, &opts, &Threads(threads)).unwrap();
            let reference = reference_output(&data, &run16.codes, &opts, true, None);
            let err = max_abs_diff(&run16.output, &reference);
            assert!(
                err <= TOLERANCE,
                "{c:?} f16 threads {threads}: max |Δ| = {err:e}"
            );
        }
    }
    // A NaN value in a padded position (batch row 1 has 3 padded tokens): no output is NaN.
    let c = Case { p: 10, ..base };
    let mut data = make_data(c, &mut rng);
    data.past_value[(c.h * c.p) * c.d] = f32::NAN; // batch row 1, kv head 0, token 0: padded
    let opts = AttentionOptions::default();
    let run = run_kernel::<f32>(&data, &opts, &Serial).unwrap();
    assert!(
        run.output.iter().all(|x| x.is_finite()),
        "a padded NaN leaked"
    );
    // The padded row's value does not matter: the reference reads 0 there.
    data.past_value[(c.h * c.p) * c.d] = 0.0;
    let reference = reference_output(&data, &run.codes, &opts, false, None);
    assert!(max_abs_diff(&run.output, &reference) <= TOLERANCE);
}

#[test]
fn shared_buffer_length_is_checked() {
    let shapes = |psl| lookat_op::kernels::ShapeInputs {
        query: &[1, 2, 1, 8],
        key: &[1, 1, 1, 8],
        value: &[1, 1, 1, 8],
        past_key_codes: &[1, 1, 4, 2],
        past_value: &[1, 1, 4, 8],
        attention_mask: None,
        codebooks: &[1, 2, 16, 4],
        past_sequence_length: Some(psl),
        value_row_extra: 0,
    };
    let g = Geometry::from_shapes(&shapes(3), 2, 1).expect("3 + 1 rows fit 4");
    assert_eq!(
        (g.past_tokens, g.capacity, g.present_rows()),
        (3, Some(4), 4)
    );
    for bad in [4, -1, i64::MAX] {
        let err = Geometry::from_shapes(&shapes(bad), 2, 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'past_sequence_length' is") && err.contains("<= 4"),
            "{err}"
        );
    }
}

#[test]
fn codes_beyond_the_codebook_are_refused() {
    let mut rng = Rng(5);
    let c = Case {
        b: 2,
        h: 2,
        d: 64,
        p: 4,
        s: 1,
        m: 4,
        k: 16,
        masked: false,
        exact_current: false,
        group: 1,
        head_major: false,
        sinks: 0,
        window: 0,
    };
    let mut data = make_data(c, &mut rng);
    data.past_codes[(2 * 4 + 3) * 4 + 1] = 16; // batch 1, head 0, token 3, subspace 1
    let err = run_kernel::<f32>(&data, &AttentionOptions::default(), &Serial)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("past_key_codes") && msg.contains("code 16"),
        "{msg}"
    );
    assert!(
        msg.contains("batch 1, kv head 0, token 3, subspace 1"),
        "{msg}"
    );
}

#[test]
fn fully_padded_query_rows_give_zeros_not_nan() {
    let mut rng = Rng(11);
    let c = Case {
        b: 1,
        h: 2,
        d: 64,
        p: 0,
        s: 4,
        m: 4,
        k: 16,
        masked: false,
        exact_current: false,
        group: 1,
        head_major: false,
        sinks: 0,
        window: 0,
    };
    let mut data = make_data(c, &mut rng);
    data.mask = Some(vec![0, 0, 1, 1]);
    let run = run_kernel::<f32>(&data, &AttentionOptions::default(), &Serial).unwrap();
    assert!(run.output[..2 * 128].iter().all(|&x| x == 0.0));
    assert!(run.output[2 * 128..]
        .iter()
        .all(|x| x.is_finite() && *x != 0.0));
}

/// `n` random int8 rows of `d` values, each followed by its float32 scale (little-endian bytes)
/// from `scale(t, rng)`, drawn after the row's values; and the scales.
fn int8_rows(
    rng: &mut Rng,
    n: usize,
    d: usize,
    mut scale: impl FnMut(usize, &mut Rng) -> f32,
) -> (Vec<i8>, Vec<f32>) {
    let stride = d + 4;
    let mut rows8 = vec![0i8; n * stride];
    let mut scales = vec![0.0f32; n];
    for t in 0..n {
        for c in 0..d {
            rows8[t * stride + c] = (rng.below(255) as i32 - 127) as i8;
        }
        scales[t] = scale(t, rng);
        for (i, byte) in scales[t].to_le_bytes().into_iter().enumerate() {
            rows8[t * stride + d + i] = byte as i8;
        }
    }
    (rows8, scales)
}

/// The SIMD paths against the scalar reference on random blocks: every row width up to 67 and a
/// few wide ones (column tails and strips), zero weights over NaN rows (skipped, not multiplied),
/// the copy (exact), and streaming stores on aligned and unaligned destinations.
#[test]
fn simd_value_accumulation_matches_scalar() {
    use lookat_op::kernels::simd;
    let mut rng = Rng(77);
    println!("SIMD level: {}", simd::simd_level());
    let widths: Vec<usize> = (1..68).chain([96, 128, 136, 200]).collect();
    for (case, &d) in widths.iter().enumerate() {
        let n = case % 7 + (case % 3) * 5;
        let mut rows: Vec<f32> = rng.vec(n * d, 3.0);
        let mut probs: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        if n > 2 {
            probs[1] = 0.0;
            rows[d..2 * d].fill(f32::NAN);
        }
        let rows16: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
        let start: Vec<f32> = rng.vec(d, 1.0);
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{what} d={d} n={n}: {x} vs {y}"
                );
            }
        };
        for stream in [false, true] {
            // Offset 1 makes the destination unaligned for the streaming path.
            for offset in [0, 1] {
                let (mut a, mut b) = (start.clone(), start.clone());
                let mut copy = vec![0.0f32; n * d + offset];
                simd::accumulate_rows_f32(
                    &mut [&mut a],
                    &[&probs],
                    &rows,
                    Some(&mut copy[offset..]),
                    stream,
                );
                simd::scalar::accumulate_rows_f32(&mut [&mut b], &[&probs], &rows, None);
                close(&a, &b, "f32");
                assert!(copy[offset..]
                    .iter()
                    .zip(&rows)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
                let (mut a, mut b) = (start.clone(), start.clone());
                let mut copy16 = vec![f16::ZERO; n * d + offset];
                simd::accumulate_rows_f16(
                    &mut [&mut a],
                    &[&probs],
                    &rows16,
                    Some(&mut copy16[offset..]),
                    stream,
                );
                simd::scalar::accumulate_rows_f16(&mut [&mut b], &[&probs], &rows16, None);
                close(&a, &b, "f16");
                assert!(copy16[offset..]
                    .iter()
                    .zip(&rows16)
                    .all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
        let (mut a, mut b) = (start.clone(), start.clone());
        simd::accumulate_rows_f32(&mut [&mut a], &[&probs], &rows, None, false);
        simd::scalar::accumulate_rows_f32(&mut [&mut b], &[&probs], &rows, None);
        close(&a, &b, "f32 without copy");

        // Int8 rows (D values, then the row's float32 scale as four bytes) against an f64 sum
        // written here; the masked row's scale is NaN and must not leak.
        let stride = d + 4;
        let (rows8, scales) = int8_rows(&mut rng, n, d, |t, rng| {
            if n > 2 && t == 1 {
                f32::NAN
            } else {
                rng.uniform().abs() * 0.05
            }
        });
        let mut a = start.clone();
        let mut copy8 = vec![0i8; n * stride];
        simd::accumulate_rows_int8(&mut [&mut a], &[&probs], &rows8, Some(&mut copy8));
        assert_eq!(copy8, rows8, "int8 copy d={d}");
        for c in 0..d {
            let want = start[c] as f64
                + (0..n)
                    .filter(|&t| probs[t] != 0.0)
                    .map(|t| probs[t] as f64 * scales[t] as f64 * rows8[t * stride + c] as f64)
                    .sum::<f64>();
            assert!(
                (a[c] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "int8 d={d} n={n} column {c}: {} vs {want}",
                a[c]
            );
        }
    }
}

/// Int8 rows over long blocks, for groups of 1 to 4 queries: the weights are scaled a register of
/// rows at a time (gathers where the CPU has them) in chunks of rows, so the row counts straddle
/// a register (16) and a chunk (128); rows of weight 0 — some with a NaN or infinite scale —
/// add nothing, in the middle of a register, for one query or for all.
#[test]
fn int8_value_accumulation_over_long_blocks() {
    use lookat_op::kernels::simd;
    let mut rng = Rng(79);
    for &n in &[15usize, 16, 17, 31, 127, 128, 129, 257, 300] {
        for &d in &[64usize, 16, 40] {
            for q_n in 1..=simd::GROUP_MAX {
                let stride = d + 4;
                let mut probs: Vec<Vec<f32>> = (0..q_n)
                    .map(|_| (0..n).map(|_| rng.uniform().abs()).collect())
                    .collect();
                let (rows8, scales) = int8_rows(&mut rng, n, d, |t, rng| match t % 37 {
                    5 => f32::NAN,
                    6 => f32::INFINITY,
                    _ => rng.uniform().abs() * 0.05,
                });
                for t in 0..n {
                    if t % 37 == 5 || t % 37 == 6 {
                        for p in probs.iter_mut() {
                            p[t] = 0.0;
                        }
                    }
                    if t % 11 == 3 {
                        probs[0][t] = 0.0;
                    }
                }
                let starts: Vec<Vec<f32>> = (0..q_n).map(|_| rng.vec(d, 1.0)).collect();
                let mut accs = starts.clone();
                let mut refs: Vec<&mut [f32]> = accs.iter_mut().map(Vec::as_mut_slice).collect();
                let weights: Vec<&[f32]> = probs.iter().map(Vec::as_slice).collect();
                simd::accumulate_rows_int8(&mut refs, &weights, &rows8, None);
                for q in 0..q_n {
                    for c in 0..d {
                        let want = starts[q][c] as f64
                            + (0..n)
                                .filter(|&t| probs[q][t] != 0.0)
                                .map(|t| {
                                    probs[q][t] as f64
                                        * scales[t] as f64
                                        * rows8[t * stride + c] as f64
                                })
                                .sum::<f64>();
                        let got = accs[q][c] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "n={n} d={d} queries={q_n} query {q} column {c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Table scores of a group of queries in one pass over the codes: bit-identical to each query's
/// own pass, and to an f64 sum of the table entries up to rounding, for fixed (K = 256) and
/// generic table sizes; score rows past each query's tokens are left alone.
#[test]
fn grouped_table_scores_equal_single_query_scores() {
    use lookat_op::kernels::{adc_scores, adc_scores_group, simd::GROUP_MAX};
    let mut rng = Rng(79);
    for (m, k) in [
        (1, 256),
        (2, 256),
        (4, 256),
        (8, 256),
        (16, 256),
        (3, 256),
        (4, 16),
        (2, 7),
    ] {
        for q_n in 1..=GROUP_MAX {
            let tokens = 1 + rng.below(70);
            let ld = tokens + rng.below(5);
            let luts = rng.vec(q_n * m * k, 2.0);
            let codes: Vec<u8> = (0..tokens * m).map(|_| rng.below(k) as u8).collect();
            let mut scores = vec![f32::NAN; q_n * ld];
            adc_scores_group(&luts, &codes, k, m, &mut scores, ld);
            for q in 0..q_n {
                let lut = &luts[q * m * k..][..m * k];
                let mut single = vec![0.0f32; tokens];
                adc_scores(lut, &codes, k, m, &mut single);
                let row = &scores[q * ld..][..ld];
                for t in 0..tokens {
                    assert_eq!(
                        row[t].to_bits(),
                        single[t].to_bits(),
                        "m={m} k={k} q={q} t={t}"
                    );
                    let want: f64 = (0..m)
                        .map(|j| lut[j * k + codes[t * m + j] as usize] as f64)
                        .sum();
                    assert!((row[t] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()));
                }
                assert!(
                    row[tokens..].iter().all(|x| x.is_nan()),
                    "m={m} k={k}: row tail written"
                );
            }
        }
    }
}

/// Grouped accumulation (1 to GROUP_MAX queries over the same rows, each row read once) against
/// an f64 sum per query written here, for every value type: widths that leave column tails and
/// split the group's strips, weights of exactly 0 for some queries only (their row is skipped
/// for them, counted for the others), a NaN row that every query skips, and the copy (exact,
/// whichever query's weights are 0).
#[test]
fn grouped_value_accumulation_matches_per_query_sums() {
    use lookat_op::kernels::simd::{self, GROUP_MAX};
    let mut rng = Rng(78);
    for d in (1..=67).chain([96, 128, 200]) {
        for q_n in 1..=GROUP_MAX {
            let n = 1 + (d + q_n) % 9;
            let rows: Vec<f32> = rng.vec(n * d, 3.0);
            let mut probs: Vec<Vec<f32>> = (0..q_n)
                .map(|_| (0..n).map(|_| rng.uniform().abs()).collect())
                .collect();
            let mut rows = rows;
            if n > 2 {
                // Row 1: NaN, weight 0 for every query. Row 0: weight 0 for query 0 only.
                rows[d..2 * d].fill(f32::NAN);
                for p in probs.iter_mut() {
                    p[1] = 0.0;
                }
                probs[0][0] = 0.0;
            }
            let starts: Vec<Vec<f32>> = (0..q_n).map(|_| rng.vec(d, 1.0)).collect();
            let weights: Vec<&[f32]> = probs.iter().map(Vec::as_slice).collect();
            let check = |got: &[Vec<f32>], value: &dyn Fn(usize, usize) -> f64, what: &str| {
                for q in 0..q_n {
                    for c in 0..d {
                        let want = starts[q][c] as f64
                            + (0..n)
                                .filter(|&t| probs[q][t] != 0.0)
                                .map(|t| probs[q][t] as f64 * value(t, c))
                                .sum::<f64>();
                        let x = got[q][c] as f64;
                        assert!(
                            (x - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{what} d={d} queries={q_n} n={n} query {q} column {c}: {x} vs {want}"
                        );
                    }
                }
            };
            let run = |f: &mut dyn FnMut(&mut [&mut [f32]])| {
                let mut accs = starts.clone();
                let mut refs: Vec<&mut [f32]> = accs.iter_mut().map(Vec::as_mut_slice).collect();
                f(&mut refs);
                accs
            };

            let mut copy = vec![0.0f32; n * d];
            let got = run(&mut |acc| {
                simd::accumulate_rows_f32(acc, &weights, &rows, Some(&mut copy), false)
            });
            check(&got, &|t, c| rows[t * d + c] as f64, "f32");
            assert!(copy
                .iter()
                .zip(&rows)
                .all(|(x, y)| x.to_bits() == y.to_bits()));

            let rows16: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
            let mut copy16 = vec![f16::ZERO; n * d];
            let got = run(&mut |acc| {
                simd::accumulate_rows_f16(acc, &weights, &rows16, Some(&mut copy16), true)
            });
            check(&got, &|t, c| rows16[t * d + c].to_f64(), "f16");
            assert!(copy16
                .iter()
                .zip(&rows16)
                .all(|(x, y)| x.to_bits() == y.to_bits()));

            let stride = d + 4;
            let (rows8, scales) = int8_rows(&mut rng, n, d, |t, rng| {
                if n > 2 && t == 1 {
                    f32::NAN
                } else {
                    rng.uniform().abs() * 0.05
                }
            });
            let mut copy8 = vec![0i8; n * stride];
            let got =
                run(&mut |acc| simd::accumulate_rows_int8(acc, &weights, &rows8, Some(&mut copy8)));
            check(
                &got,
                &|t, c| scales[t] as f64 * rows8[t * stride + c] as f64,
                "int8",
            );
            assert_eq!(copy8, rows8, "int8 copy d={d}");
        }
    }
}

/// The prefill products (score tiles over transposed keys; weights times value rows) against the
/// plain loops, for query counts that leave a partial block, causal widths that are not whole
/// tiles, and head sizes that leave columns to the scalar tail; entries past each block's
/// rounded width stay untouched.
#[test]
fn prefill_products_match_plain_loops() {
    use lookat_op::kernels::simd::{self, PRODUCT_QUERIES, PRODUCT_TILE};
    let mut rng = Rng(211);
    for (n, d, t_n) in [
        (64usize, 64usize, 300usize),
        (7, 64, 33),
        (13, 24, 97),
        (4, 8, 32),
        (1, 64, 5),
    ] {
        let blocks = n.div_ceil(PRODUCT_QUERIES);
        let widths: Vec<usize> = (0..blocks)
            .map(|b| (t_n * (b + 1) / blocks).clamp(1, t_n))
            .collect();
        let stride = t_n.next_multiple_of(PRODUCT_TILE) + 16;
        let ld = stride;
        let xs = rng.vec(n * d, 1.0);
        let kt = rng.vec(d * stride, 1.0);
        let sentinel = 12345.0f32;
        let (mut got, mut want) = (vec![sentinel; n * ld], vec![sentinel; n * ld]);
        simd::query_key_dots(&xs, n, d, &kt, stride, &widths, &mut got, ld);
        simd::scalar::query_key_dots(&xs, n, d, &kt, stride, &widths, &mut want, ld);
        for q in 0..n {
            let rounded = widths[q / PRODUCT_QUERIES].next_multiple_of(PRODUCT_TILE);
            for t in 0..ld {
                let (g, w) = (got[q * ld + t], want[q * ld + t]);
                if t >= rounded {
                    assert_eq!(g, sentinel, "n={n} d={d} query {q} column {t} written");
                } else {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "scores n={n} d={d} q={q} t={t}: {g} vs {w}"
                    );
                }
            }
        }
        let p: Vec<f32> = rng.vec(n * ld, 1.0).iter().map(|x| x.abs()).collect();
        let v = rng.vec(t_n * d, 1.0);
        let (mut got, mut want) = (vec![0.0; n * d], vec![0.0; n * d]);
        simd::weighted_rows(&p, ld, n, &widths, &v, d, &mut got);
        simd::scalar::weighted_rows(&p, ld, n, &widths, &v, d, &mut want);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "outputs n={n} d={d} [{i}]: {g} vs {w}"
            );
        }
    }
}

/// The SIMD `exp` (and its sum) and `max` against the scalar ones (libm), over the range softmax
/// uses, `-inf` and NaN included.
#[test]
fn simd_exp_matches_scalar() {
    use lookat_op::kernels::simd;
    let mut rng = Rng(78);
    for n in [0, 1, 7, 8, 9, 31, 64, 257] {
        let mut x: Vec<f32> = (0..n).map(|_| -100.0 * rng.uniform().abs()).collect();
        for (i, special) in [0.0, f32::NEG_INFINITY, -87.5, -86.9, -1e-7, 3.0]
            .into_iter()
            .enumerate()
        {
            if i < n {
                x[i] = special;
            }
        }
        let shift = if n % 2 == 0 { 0.0 } else { 1.5 };
        let (mut a, mut b) = (x.clone(), x.clone());
        let sum_simd = simd::exp_shifted(&mut a, shift);
        let sum_scalar = simd::scalar::exp_shifted(&mut b, shift);
        assert!(
            (sum_simd - sum_scalar).abs() <= 1e-5 * sum_scalar + 1e-30,
            "sum of exp n={n}"
        );
        let mut with_nan = x.clone();
        if n > 2 {
            with_nan[n / 2] = f32::NAN;
        }
        assert_eq!(
            simd::max(&with_nan),
            simd::scalar::max(&with_nan),
            "max n={n}"
        );
        for ((&got, &want), &xi) in a.iter().zip(&b).zip(&x) {
            // Relative 1e-6 where the result is a normal float; below e^-87 both are ~0.
            assert!(
                (got - want).abs() <= 1e-6 * want + 1e-37,
                "exp({xi} - {shift}): {got} vs {want}"
            );
        }
        assert!(a
            .iter()
            .zip(&x)
            .all(|(&got, &xi)| xi != f32::NEG_INFINITY || got == 0.0));
    }
}

/// Long caches cross several token blocks and several query chunks (S = 37 > 16).
#[test]
fn long_prefill_and_decode_over_many_blocks() {
    let mut rng = Rng(123);
    for (p, s) in [(0, 37), (700, 1), (520, 20)] {
        let c = Case {
            b: 1,
            h: 2,
            d: 64,
            p,
            s,
            m: 8,
            k: 64,
            masked: true,
            exact_current: false,
            group: 1,
            head_major: false,
            sinks: 0,
            window: 0,
        };
        check_case::<f32>(c, &mut rng, false);
        check_case::<f16>(c, &mut rng, true);
    }
}

/// Whether `code` is the nearest centroid of `x` within the encoding's documented tie bound
/// (f64 distances): `dist(code) <= min dist + ENCODE_TIE_BOUND·(d'+2)·(‖x‖² + max‖c‖²)`.
fn within_tie_bound(x: &[f32], centroids: &[f32], code: u8) -> (bool, bool) {
    use lookat_op::kernels::ENCODE_TIE_BOUND;
    let sub = x.len();
    let dists: Vec<f64> = centroids
        .chunks_exact(sub)
        .map(|c| subvector_dist2(x, c))
        .collect();
    let best = dists.iter().cloned().fold(f64::INFINITY, f64::min);
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
    let max_c = centroids.chunks_exact(sub).map(norm).fold(0.0, f64::max);
    let slack = ENCODE_TIE_BOUND * (sub + 2) as f64 * (norm(x) + max_c);
    let chosen = dists[code as usize];
    (chosen <= best + slack, chosen == best)
}

/// The prepared codebook (transposed, tiled, fused multiply-adds, expanded distances) against
/// naive f64 arithmetic: tables to float rounding, codes the nearest centroid within the tie
/// bound docs/op-spec.md states, for single vectors and groups.
#[test]
fn prepared_codebook_matches_f64_arithmetic() {
    use lookat_op::kernels::PreparedCodebook;
    let mut rng = Rng(31);
    for (m, k, sub) in [
        (1, 256, 64),
        (4, 256, 16),
        (8, 16, 8),
        (64, 256, 1),
        (3, 5, 4),
        (2, 100, 32),
    ] {
        let book = rng.vec(m * k * sub, 1.5);
        let prepared = PreparedCodebook::new(&book, m, k, sub);
        for n in [1, 4, 7, 9, 300] {
            let xs: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(m * sub, 1.5)).collect();
            let mut got = vec![0.0; n * m * k];
            let mut codes = vec![0u8; n * m];
            prepared.build_luts(n, |i| &xs[i], 0.3, &mut got);
            prepared.encode_keys(n, |i| &xs[i], &mut codes);
            for (i, x) in xs.iter().enumerate() {
                for j in 0..m {
                    let part = &x[j * sub..(j + 1) * sub];
                    for c in 0..k {
                        let centroid = &book[(j * k + c) * sub..][..sub];
                        let want = 0.3
                            * part
                                .iter()
                                .zip(centroid)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>();
                        let g = got[(i * m + j) * k + c] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "lut m={m} k={k}: {g} vs {want}"
                        );
                    }
                    let cents = &book[j * k * sub..(j + 1) * k * sub];
                    assert!(
                        within_tie_bound(part, cents, codes[i * m + j]).0,
                        "code m={m} k={k} vector {i} subspace {j} is not nearest within the bound"
                    );
                }
            }
            let mut one = vec![0.0; m * k];
            prepared.build_lut(&xs[0], 0.3, &mut one);
            assert_eq!(one, got[..m * k], "single and grouped tables m={m} k={k}");
            let mut one_code = vec![0u8; m];
            prepared.encode(&xs[0], &mut one_code);
            assert_eq!(one_code, codes[..m], "single and grouped codes m={m} k={k}");
        }
    }
}

/// The encoder's register kernels (AVX2, AVX-512, NEON: the nearest centroid kept in registers,
/// tile by tile) against the first smallest of the distances the portable loops define —
/// `‖c‖²` summed in order, then one fused multiply-add per element, `i` ascending — bit for bit:
/// exact ties (duplicated centroids) go to the lowest index, NaN sub-vectors to code 0, for K
/// that fills the register tiles and K that does not (the portable loops then run).
#[test]
fn encoder_kernels_pick_the_first_smallest_fused_distance() {
    use lookat_op::kernels::PreparedCodebook;
    let mut rng = Rng(97);
    for (m, k, sub) in [
        (4, 256, 16),
        (2, 256, 32),
        (8, 64, 8),
        (1, 128, 64),
        (4, 40, 16),
    ] {
        let mut book = rng.vec(m * k * sub, 1.0);
        // Exact ties: centroid c + 1 duplicates centroid c for every third c.
        for j in 0..m {
            for c in (0..k - 1).step_by(3) {
                let (src, dst) = ((j * k + c) * sub, (j * k + c + 1) * sub);
                book.copy_within(src..src + sub, dst);
            }
        }
        let prepared = PreparedCodebook::new(&book, m, k, sub);
        let n = 37;
        let mut keys: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(m * sub, 1.0)).collect();
        // Keys equal to a centroid (distance ties at the minimum), and one NaN sub-vector.
        for (i, key) in keys.iter_mut().enumerate().take(8) {
            let c = 3 * i % k;
            key[..sub].copy_from_slice(&book[c * sub..(c + 1) * sub]);
        }
        keys[9][sub - 1] = f32::NAN;
        let mut codes = vec![0u8; n * m];
        prepared.encode_keys(n, |i| &keys[i], &mut codes);
        for (i, key) in keys.iter().enumerate() {
            for j in 0..m {
                let x = &key[j * sub..(j + 1) * sub];
                let (mut best, mut want) = (f32::INFINITY, 0usize);
                for c in 0..k {
                    let cent = &book[(j * k + c) * sub..][..sub];
                    let mut d: f32 = cent.iter().map(|v| v * v).sum();
                    for (&a, &b) in x.iter().zip(cent) {
                        d = (-2.0 * a).mul_add(b, d);
                    }
                    if d < best {
                        (best, want) = (d, c);
                    }
                }
                let level = lookat_op::kernels::simd::simd_level();
                if level == "scalar" && cfg!(target_arch = "x86_64") {
                    // The portable loops without FMA (x86_64 scalar) round differently: the
                    // documented bound holds instead.
                    let cents = &book[j * k * sub..(j + 1) * k * sub];
                    assert!(
                        x.iter().any(|v| v.is_nan())
                            || within_tie_bound(x, cents, codes[i * m + j]).0,
                        "m={m} k={k} key {i} subspace {j} ({level})"
                    );
                } else {
                    assert_eq!(
                        codes[i * m + j] as usize,
                        want,
                        "m={m} k={k} key {i} subspace {j} ({level})"
                    );
                }
            }
        }
    }
}

/// One-float sub-vectors (m = D) among 256 close centroids: where the expanded form's rounding
/// decides near-ties, the code may differ from the exact nearest, but never by more than the
/// documented bound. Prints how often the choice was not the exact nearest.
#[test]
fn near_ties_stay_within_the_documented_bound() {
    use lookat_op::kernels::PreparedCodebook;
    let mut rng = Rng(77);
    let (m, k, sub, n) = (64, 256, 1, 2000);
    let book = rng.vec(m * k * sub, 1.0);
    let prepared = PreparedCodebook::new(&book, m, k, sub);
    let xs: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(m * sub, 1.0)).collect();
    let mut codes = vec![0u8; n * m];
    prepared.encode_keys(n, |i| &xs[i], &mut codes);
    let mut inexact = 0;
    for (i, x) in xs.iter().enumerate() {
        for j in 0..m {
            let (ok, exact) =
                within_tie_bound(&x[j..j + 1], &book[j * k..(j + 1) * k], codes[i * m + j]);
            assert!(ok, "vector {i} subspace {j}: code beyond the tie bound");
            inexact += usize::from(!exact);
        }
    }
    println!(
        "{inexact} of {} one-float encodings chose a centroid other than the exact nearest",
        n * m
    );
}

/// Decode steps on few heads split each cache into token ranges on a pool that reports several
/// threads (flash-decoding); the merged result still matches the f64 reference, masks, causal
/// order of several new tokens and exact scoring of the current ones included.
#[test]
fn split_decode_matches_reference() {
    let mut rng = Rng(909);
    for (b, h, p, s, masked, exact_current) in [
        (1, 1, 4000, 1, false, false),
        (1, 2, 3000, 1, true, false),
        (2, 1, 2100, 3, true, true),
        (1, 1, 5000, 16, false, false),
    ] {
        let c = Case {
            b,
            h,
            d: 64,
            p,
            s,
            m: 4,
            k: 256,
            masked,
            exact_current,
            group: 1,
            head_major: false,
            sinks: 0,
            window: 0,
        };
        check_case_on::<f32>(c, &mut rng, false, &Threads(4));
        check_case_on::<f16>(c, &mut rng, true, &Threads(3));
    }
}

/// A full-precision key window (sink tokens, each query's most recent tokens) against the f64
/// reference: multi-head and grouped-query, both layouts, prefill and decode, masks, windows
/// longer and shorter than the cache, both value types (the window is stored in that type).
#[test]
fn key_window_matches_reference() {
    let mut rng = Rng(0x3a11);
    let mut cases = 0;
    for (sinks, window) in [(4, 16), (0, 1), (2, 0), (1, 300), (4, 64)] {
        for (kv, group, head_major) in [(2, 1, false), (3, 3, true), (1, 2, false)] {
            for (p, s) in [(0, 9), (40, 1), (100, 30), (5, 2)] {
                let c = Case {
                    b: 2,
                    h: kv,
                    d: 64,
                    p,
                    s,
                    m: 8,
                    k: 256,
                    masked: cases % 2 == 0,
                    exact_current: cases % 7 == 3,
                    group,
                    head_major,
                    sinks,
                    window,
                };
                check_case::<f32>(c, &mut rng, false);
                check_case::<f16>(c, &mut rng, true);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 5 * 3 * 4);
}

/// With a key window, one prefill of T tokens and T decode steps that feed each present cache
/// (codes, values, window) back as the next past give the same caches bit for bit and the same
/// attention outputs up to float summation order; the split (flash-decoding) path included.
#[test]
fn key_window_prefill_and_decode_agree() {
    for (value_f16, par) in [(false, 1), (true, 4)] {
        let (h, group, d, m, k, t_n, sinks, window) = (2, 2, 64, 4, 16, 1200, 3, 40);
        let mut rng = Rng(0xdec0de);
        let c = Case {
            b: 1,
            h,
            d,
            p: 0,
            s: t_n,
            m,
            k,
            masked: false,
            exact_current: false,
            group,
            head_major: true,
            sinks,
            window,
        };
        let full = make_data(c, &mut rng);
        let opts = AttentionOptions {
            scale: None,
            exact_current: false,
            sinks,
            window,
        };
        let threads = Threads(par);
        let run_all = |data: &Data| -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>) {
            if value_f16 {
                let r = run_kernel::<f16>(data, &opts, &threads).unwrap();
                let to = |v: &[f16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
                (r.output, r.codes, to(&r.values), to(&r.window))
            } else {
                let r = run_kernel::<f32>(data, &opts, &threads).unwrap();
                (r.output, r.codes, r.values, r.window)
            }
        };
        let (prefill_out, prefill_codes, prefill_values, prefill_window) = run_all(&full);

        // Decode: token by token, each step's present fed back as the next past.
        let e = h * group * d;
        let (mut codes, mut values, mut window_rows) = (vec![], vec![], vec![]);
        for t in 0..t_n {
            // Row t of head hh of a head-major [1, heads, T, D] input.
            let rows = |x: &[f32], heads: usize| -> Vec<f32> {
                (0..heads)
                    .flat_map(|hh| x[(hh * t_n + t) * d..][..d].to_vec())
                    .collect()
            };
            let mut step = make_data(Case { p: t, s: 1, ..c }, &mut Rng(1));
            step.query = rows(&full.query, h * group);
            step.key = rows(&full.key, h);
            step.value = rows(&full.value, h);
            step.codebooks = full.codebooks.clone();
            step.past_codes = codes;
            step.past_value = values;
            // The past window is the one the previous step returned, not one rebuilt from keys.
            let r = if value_f16 {
                let w: Vec<f16> = window_rows.iter().map(|&x| f16::from_f32(x)).collect();
                run_with_window::<f16>(&step, &opts, &threads, &w)
            } else {
                run_with_window::<f32>(&step, &opts, &threads, &window_rows)
            };
            for i in 0..e {
                let (want, got) = (prefill_out[t * e + i], r.0[i]);
                assert!(
                    (want - got).abs() <= 2e-5 * (1.0 + want.abs()),
                    "f16={value_f16} token {t} element {i}: prefill {want} decode {got}"
                );
            }
            (codes, values, window_rows) = (r.1, r.2, r.3);
        }
        assert_eq!(codes, prefill_codes, "f16={value_f16} codes");
        assert_eq!(values, prefill_values, "f16={value_f16} values");
        assert_eq!(window_rows, prefill_window, "f16={value_f16} key window");
    }
}

/// Runs one call with `past_window` given as is; returns (output, codes, values, window) as f32.
fn run_with_window<V: ValueElem<Window = V>>(
    data: &Data,
    opts: &AttentionOptions,
    par: &dyn ParallelFor,
    past_window: &[V],
) -> (Vec<f32>, Vec<u8>, Vec<f32>, Vec<f32>) {
    let g = data.g;
    let t = g.total_tokens();
    let rows = data.window_tokens(t).len();
    let past_value: Vec<V> = past_rows::<V>(data);
    let mut output = vec![0f32; g.batch * g.new_tokens * g.hidden()];
    let mut codes = vec![0u8; g.batch * g.kv_heads * t * g.subspaces];
    let mut values = vec![V::from_f32(0.0); g.batch * g.kv_heads * t * g.head_dim];
    let mut window = vec![V::from_f32(0.0); g.batch * g.kv_heads * rows * g.head_dim];
    lookat_attention(
        &g,
        opts,
        &AttentionInputs {
            query: &data.query,
            key: &data.key,
            value: &data.value,
            past_key_codes: &data.past_codes,
            past_value: &past_value,
            past_in_present: false,
            attention_mask: None,
            codebooks: &data.codebooks,
            prepared: None,
            past_key_window: past_window,
            transforms: None,
        },
        AttentionOutputs {
            output: &mut output,
            present_key_codes: &mut codes,
            present_value: &mut values,
            present_key_window: &mut window,
        },
        par,
    )
    .unwrap();
    let f = |v: &[V]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    (output, codes, f(&values), f(&window))
}

/// Key/query transforms: keys encoded as `k·A`, tables from `q·B` (random A and B here: the
/// kernels apply them whatever they are), exact window scores with the raw `q·k`.
#[test]
fn key_and_query_transforms_match_reference() {
    let mut rng = Rng(0x7a);
    for (kv, group, head_major, sinks, window, p, s) in [
        (2, 1, false, 0, 0, 30, 5),
        (3, 3, true, 4, 16, 100, 1),
        (1, 2, true, 0, 0, 0, 12),
        (2, 2, false, 1, 8, 2100, 1),
    ] {
        let c = Case {
            b: 2,
            h: kv,
            d: 64,
            p,
            s,
            m: 8,
            k: 256,
            masked: true,
            exact_current: false,
            group,
            head_major,
            sinks,
            window,
        };
        for threads in [1, 4] {
            let mut data = make_data(c, &mut rng);
            data.transforms = Some((rng.vec(kv * 64 * 64, 0.3), rng.vec(kv * 64 * 64, 0.3)));
            let opts = AttentionOptions {
                scale: None,
                exact_current: false,
                sinks,
                window,
            };
            let run = run_kernel::<f32>(&data, &opts, &Threads(threads))
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            check_codes(&data, &run.codes);
            let reference = reference_output(&data, &run.codes, &opts, false, None);
            let err = max_abs_diff(&run.output, &reference);
            assert!(
                err <= TOLERANCE,
                "{c:?} threads {threads}: max |Δ| = {err:e}"
            );
        }
    }
}
