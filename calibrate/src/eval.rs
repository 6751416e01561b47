//! Attention-level fidelity of key-compression schemes on keys a model really produces: the
//! paper's metrics (output cosine, KL of the attention distribution, Spearman ρ of scores, top-5
//! overlap), computed against exact attention in f64, values kept exact for every scheme.
//! LOOKAT scores go through the kernels the op runs at inference: the key/query transforms,
//! `PreparedCodebook` encoding and tables, then `adc_scores`; a key window's tokens are scored
//! exactly, as the op scores them.

use lookat_op::kernels::{adc_scores, KeyTransforms, PreparedCodebook};

/// A scalar way to store keys (symmetric; scales from the keys being stored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    Fp16,
    Int8PerTensor,
    Int8PerChannel,
    Int4PerTensor,
    Int4PerChannel,
}

impl Scheme {
    pub fn name(&self) -> String {
        match self {
            Scheme::Fp16 => "fp16".into(),
            Scheme::Int8PerTensor => "int8 per-tensor".into(),
            Scheme::Int8PerChannel => "int8 per-channel".into(),
            Scheme::Int4PerTensor => "int4 per-tensor".into(),
            Scheme::Int4PerChannel => "int4 per-channel".into(),
        }
    }

    /// Key bytes per token and head, without side data (scales).
    pub fn key_bytes(&self, d: usize) -> f64 {
        match self {
            Scheme::Fp16 => 2.0 * d as f64,
            Scheme::Int8PerTensor | Scheme::Int8PerChannel => d as f64,
            Scheme::Int4PerTensor | Scheme::Int4PerChannel => d as f64 / 2.0,
        }
    }
}

/// Sums of the four metrics over queries; `mean()` divides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    pub cosine: f64,
    pub kl: f64,
    pub spearman: f64,
    pub top5: f64,
    pub count: usize,
}

impl Metrics {
    pub fn add(&mut self, o: &Metrics) {
        self.cosine += o.cosine;
        self.kl += o.kl;
        self.spearman += o.spearman;
        self.top5 += o.top5;
        self.count += o.count;
    }
    pub fn mean(&self) -> [f64; 4] {
        let n = self.count.max(1) as f64;
        [
            self.cosine / n,
            self.kl / n,
            self.spearman / n,
            self.top5 / n,
        ]
    }
}

/// Quantize-dequantize keys `[T, D]` the way a scalar scheme stores them (symmetric).
pub fn scalar_roundtrip(keys: &[f32], d: usize, scheme: Scheme) -> Vec<f32> {
    let (levels, per_channel) = match scheme {
        Scheme::Fp16 => {
            return keys
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect()
        }
        Scheme::Int8PerTensor => (127.0, false),
        Scheme::Int8PerChannel => (127.0, true),
        Scheme::Int4PerTensor => (7.0, false),
        Scheme::Int4PerChannel => (7.0, true),
    };
    let mut scale = vec![0f32; d];
    for row in keys.chunks_exact(d) {
        for (s, &x) in scale.iter_mut().zip(row) {
            *s = s.max(x.abs());
        }
    }
    if !per_channel {
        let m = scale.iter().cloned().fold(0f32, f32::max);
        scale.fill(m);
    }
    let scale: Vec<f32> = scale
        .iter()
        .map(|&m| if m > 0.0 { m / levels } else { 1.0 })
        .collect();
    keys.chunks_exact(d)
        .flat_map(|row| {
            row.iter()
                .zip(&scale)
                .map(|(&x, &s)| (x / s).round().clamp(-levels, levels) * s)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn softmax(s: &[f64]) -> Vec<f64> {
    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// Average ranks (ties share their mean rank) and the `k` largest entries (largest first, ties
/// to the lower index), from one sort.
fn ranks_and_top(x: &[f64], k: usize) -> (Vec<f64>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    // Ascending value, descending index within ties: read backwards, that is the top order.
    idx.sort_unstable_by(|&a, &b| x[a].total_cmp(&x[b]).then(b.cmp(&a)));
    let mut r = vec![0f64; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for &t in &idx[i..=j] {
            r[t] = avg;
        }
        i = j + 1;
    }
    (r, idx.iter().rev().take(k).copied().collect())
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut c, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        c += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        return 1.0;
    }
    c / (va * vb).sqrt()
}

/// `Σ_t p_t · v_t` over the first `p.len()` value rows.
fn attend(p: &[f64], values: &[f32], d: usize) -> Vec<f64> {
    let mut o = vec![0f64; d];
    for (&w, row) in p.iter().zip(values.chunks_exact(d)) {
        for (acc, &x) in o.iter_mut().zip(row) {
            *acc += w * x as f64;
        }
    }
    o
}

/// Exact attention of one query, computed once and compared with every scheme's scores.
pub struct Reference {
    p: Vec<f64>,
    out: Vec<f64>,
    ranks: Vec<f64>,
    top: Vec<usize>,
}

impl Reference {
    /// `exact`: the query's scaled scores over the tokens it sees; `values`: `[≥T, D]`.
    pub fn new(exact: &[f64], values: &[f32], d: usize) -> Reference {
        let p = softmax(exact);
        let out = attend(&p, values, d);
        let (ranks, top) = ranks_and_top(exact, exact.len().min(5));
        Reference { p, out, ranks, top }
    }

    /// The metrics of approximate scores `approx` (same tokens) against this reference.
    pub fn compare(&self, approx: &[f64], values: &[f32], d: usize) -> Metrics {
        let q = softmax(approx);
        let oa = attend(&q, values, d);
        let dot: f64 = self.out.iter().zip(&oa).map(|(a, b)| a * b).sum();
        let norm = (self.out.iter().map(|x| x * x).sum::<f64>()
            * oa.iter().map(|x| x * x).sum::<f64>())
        .sqrt();
        let kl: f64 = self
            .p
            .iter()
            .zip(&q)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, b)| a * (a.ln() - b.max(1e-300).ln()))
            .sum();
        let (ranks, top) = ranks_and_top(approx, self.top.len());
        let overlap = self.top.iter().filter(|i| top.contains(i)).count() as f64
            / self.top.len().max(1) as f64;
        Metrics {
            cosine: if norm > 0.0 { dot / norm } else { 1.0 },
            kl: kl.max(0.0),
            spearman: if approx.len() > 1 {
                pearson(&self.ranks, &ranks)
            } else {
                1.0
            },
            top5: overlap,
            count: 1,
        }
    }
}

/// `scale · q·k_t` in f64 for the first `visible` keys of `[T, D]`.
pub fn exact_scores(q: &[f32], keys: &[f32], d: usize, visible: usize, scale: f64) -> Vec<f64> {
    keys.chunks_exact(d)
        .take(visible)
        .map(|k| dot(q, k) * scale)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// The tokens a model keeps in full precision and scores exactly (the op's attributes `sinks`
/// and `window`): the first `sinks`, and each query's `recent` most recent tokens, itself
/// included.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyWindow {
    pub sinks: usize,
    pub recent: usize,
}

impl KeyWindow {
    /// Whether a query at position `pos` scores token `t <= pos` exactly.
    pub fn is_exact(&self, t: usize, pos: usize) -> bool {
        t < self.sinks || pos - t < self.recent
    }

    pub fn tokens(&self) -> usize {
        self.sinks + self.recent
    }
}

/// One kv head's keys `[T, D]` as a scheme stores them.
pub enum StoredKeys<'a> {
    /// Quantized and dequantized by a scalar scheme.
    Scalar(Vec<f32>),
    /// LOOKAT codes `[T, m]` of the keys (after the key transform `x·A` of kv head `h`, when
    /// there is one), scored through `book`'s tables of `q·B`.
    Codes {
        book: &'a PreparedCodebook,
        transforms: Option<(&'a KeyTransforms, usize)>,
        codes: Vec<u8>,
    },
}

impl<'a> StoredKeys<'a> {
    pub fn scalar(keys: &[f32], d: usize, scheme: Scheme) -> StoredKeys<'a> {
        StoredKeys::Scalar(scalar_roundtrip(keys, d, scheme))
    }

    /// Encodes `keys` `[T, D]` the way the op does: through the key transform, then the
    /// nearest centroid per subspace.
    pub fn encode(
        keys: &[f32],
        d: usize,
        book: &'a PreparedCodebook,
        transforms: Option<(&'a KeyTransforms, usize)>,
    ) -> StoredKeys<'a> {
        let n = keys.len() / d;
        let mut codes = vec![0u8; n * book.subspaces()];
        match transforms {
            Some((tr, h)) => {
                let mut moved = vec![0f32; keys.len()];
                for (k, out) in keys.chunks_exact(d).zip(moved.chunks_exact_mut(d)) {
                    tr.key(h, k, out);
                }
                book.encode_keys(n, |t| &moved[t * d..(t + 1) * d], &mut codes);
            }
            None => book.encode_keys(n, |t| &keys[t * d..(t + 1) * d], &mut codes),
        }
        StoredKeys::Codes {
            book,
            transforms,
            codes,
        }
    }

    /// Scaled scores of query `q` at position `pos` over tokens `0..=pos`: the tokens `window`
    /// keeps are scored exactly from `window_keys` (the keys as the window stores them), the
    /// others from what this scheme stores.
    pub fn scores(
        &self,
        q: &[f32],
        window_keys: &[f32],
        d: usize,
        pos: usize,
        scale: f64,
        window: KeyWindow,
    ) -> Vec<f64> {
        let visible = pos + 1;
        let mut s: Vec<f64> = match self {
            StoredKeys::Scalar(approx) => exact_scores(q, approx, d, visible, scale),
            StoredKeys::Codes {
                book,
                transforms,
                codes,
            } => {
                let (m, k) = (book.subspaces(), book.centroids());
                let mut moved = vec![0f32; d];
                let q = match transforms {
                    Some((tr, h)) => {
                        tr.query(*h, q, &mut moved);
                        &moved[..]
                    }
                    None => q,
                };
                let mut lut = vec![0f32; m * k];
                book.build_lut(q, scale as f32, &mut lut);
                let mut s = vec![0f32; visible];
                adc_scores(&lut, &codes[..visible * m], k, m, &mut s);
                s.into_iter().map(f64::from).collect()
            }
        };
        if window.tokens() > 0 {
            for (t, score) in s.iter_mut().enumerate() {
                if window.is_exact(t, pos) {
                    *score = dot(q, &window_keys[t * d..(t + 1) * d]) * scale;
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares approximate scores with exact ones for one query over `T` visible tokens.
    fn compare(exact: &[f64], approx: &[f64], values: &[f32], d: usize) -> Metrics {
        Reference::new(exact, values, d).compare(approx, values, d)
    }

    #[test]
    fn identical_scores_are_perfect() {
        let s = [0.1, 2.0, -1.0, 0.5, 0.7, 3.0];
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
        let m = compare(&s, &s, &v, 2);
        assert!(
            (m.cosine - 1.0).abs() < 1e-12
                && m.kl.abs() < 1e-12
                && (m.spearman - 1.0).abs() < 1e-12
                && m.top5 == 1.0
        );
    }

    #[test]
    fn reversed_scores_are_anticorrelated() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let r: Vec<f64> = s.iter().map(|x| -x).collect();
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let m = compare(&s, &r, &v, 1);
        assert!((m.spearman + 1.0).abs() < 1e-12);
        assert!(m.kl > 1.0);
        assert_eq!(m.top5, 0.8); // top 5 of 6 either way: tokens 1-4 are in both
    }

    fn random(rng: &mut crate::kmeans::Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect()
    }

    /// f64 reference: keys moved by `A`, nearest centroid per subspace (squared distance),
    /// score `scale · (q·B) · centroid`; window tokens `scale · q·k`.
    #[allow(clippy::too_many_arguments)]
    fn reference_scores(
        q: &[f32],
        keys: &[f32],
        book: &[f32],
        (m, k, d): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        pos: usize,
        scale: f64,
        window: KeyWindow,
    ) -> Vec<f64> {
        let apply = |x: &[f32], t: &[f32]| -> Vec<f64> {
            (0..d)
                .map(|j| (0..d).map(|i| x[i] as f64 * t[i * d + j] as f64).sum())
                .collect()
        };
        let sub = d / m;
        let qb = apply(q, b);
        (0..=pos)
            .map(|t| {
                let key = &keys[t * d..(t + 1) * d];
                // The op's window, stated independently: sinks, and the `recent` last positions.
                if t < window.sinks || t + window.recent > pos {
                    return key
                        .iter()
                        .zip(q)
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum::<f64>()
                        * scale;
                }
                let ka = apply(key, a);
                (0..m)
                    .map(|j| {
                        let centroid = |c: usize| &book[(j * k + c) * sub..(j * k + c + 1) * sub];
                        let dist = |c: usize| -> f64 {
                            centroid(c)
                                .iter()
                                .zip(&ka[j * sub..])
                                .map(|(x, y)| (*x as f64 - y).powi(2))
                                .sum()
                        };
                        let best = (0..k).min_by(|&x, &y| dist(x).total_cmp(&dist(y))).unwrap();
                        centroid(best)
                            .iter()
                            .zip(&qb[j * sub..])
                            .map(|(x, y)| *x as f64 * y)
                            .sum::<f64>()
                    })
                    .sum::<f64>()
                    * scale
            })
            .collect()
    }

    #[test]
    fn stored_codes_score_like_the_f64_reference_with_transforms_and_window() {
        let mut rng = crate::kmeans::Rng::new(7);
        let (d, t_n, scale) = (16, 40, 0.25);
        for (m, k, window) in [
            (4, 16, KeyWindow::default()),
            (
                2,
                32,
                KeyWindow {
                    sinks: 3,
                    recent: 5,
                },
            ),
            (
                8,
                8,
                KeyWindow {
                    sinks: 0,
                    recent: 64,
                },
            ),
        ] {
            let book = random(&mut rng, m * k * (d / m));
            let keys = random(&mut rng, t_n * d);
            // A random A and B = A⁻ᵀ are not needed for the scores' definition: any pair is
            // applied as given, and the reference applies the same pair.
            let (a, b) = (random(&mut rng, 2 * d * d), random(&mut rng, 2 * d * d));
            let tr = KeyTransforms::new(&a, &b, 2, d).unwrap();
            let prepared = PreparedCodebook::new(&book, m, k, d / m);
            let stored = StoredKeys::encode(&keys, d, &prepared, Some((&tr, 1)));
            for pos in [0, 7, t_n - 1] {
                let q = random(&mut rng, d);
                let got = stored.scores(&q, &keys, d, pos, scale, window);
                let want = reference_scores(
                    &q,
                    &keys,
                    &book,
                    (m, k, d),
                    &a[d * d..],
                    &b[d * d..],
                    pos,
                    scale,
                    window,
                );
                assert_eq!(got.len(), pos + 1);
                for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "m={m} pos={pos} t={t}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_window_over_every_token_is_exact() {
        let mut rng = crate::kmeans::Rng::new(3);
        let (d, t_n) = (8, 20);
        let keys = random(&mut rng, t_n * d);
        let values = random(&mut rng, t_n * d);
        let book = random(&mut rng, 2 * 4 * 4);
        let prepared = PreparedCodebook::new(&book, 2, 4, 4);
        let stored = StoredKeys::encode(&keys, d, &prepared, None);
        let q = random(&mut rng, d);
        let exact = exact_scores(&q, &keys, d, t_n, 0.5);
        let all = KeyWindow {
            sinks: 0,
            recent: t_n,
        };
        let m = compare(
            &exact,
            &stored.scores(&q, &keys, d, t_n - 1, 0.5, all),
            &values,
            d,
        );
        assert!(m.kl.abs() < 1e-12 && m.top5 == 1.0 && (m.spearman - 1.0).abs() < 1e-12);
        let none = stored.scores(&q, &keys, d, t_n - 1, 0.5, KeyWindow::default());
        assert!(
            compare(&exact, &none, &values, d).kl > 1e-6,
            "4 centroids cannot be exact"
        );
    }

    #[test]
    fn int8_roundtrip_is_close_and_int4_coarser() {
        let keys: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 17) as f32 / 7.0 - 1.0)
            .collect();
        let e8: f32 = scalar_roundtrip(&keys, 8, Scheme::Int8PerChannel)
            .iter()
            .zip(&keys)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let e4: f32 = scalar_roundtrip(&keys, 8, Scheme::Int4PerTensor)
            .iter()
            .zip(&keys)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(e8 < 0.01 && e4 > e8 && e4 < 0.2, "{e8} {e4}");
    }
}
