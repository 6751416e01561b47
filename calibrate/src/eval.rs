//! Attention-level fidelity of key-compression schemes on keys a model really produces: the
//! paper's metrics (output cosine, KL of the attention distribution, Spearman ρ of scores, top-5
//! overlap), computed against exact attention in f64, values kept exact for every scheme.
//! LOOKAT scores go through the kernels the op runs at inference: `PreparedCodebook` encoding and
//! tables, then `adc_scores`.

use lookat_op::kernels::{adc_scores, PreparedCodebook};

/// A way to store keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    Fp16,
    Int8PerTensor,
    Int8PerChannel,
    Int4PerTensor,
    Int4PerChannel,
    Lookat { subspaces: usize },
}

impl Scheme {
    pub fn name(&self) -> String {
        match self {
            Scheme::Fp16 => "fp16".into(),
            Scheme::Int8PerTensor => "int8 per-tensor".into(),
            Scheme::Int8PerChannel => "int8 per-channel".into(),
            Scheme::Int4PerTensor => "int4 per-tensor".into(),
            Scheme::Int4PerChannel => "int4 per-channel".into(),
            Scheme::Lookat { subspaces } => format!("lookat m={subspaces}"),
        }
    }

    /// Key bytes per token and head, without side data (scales, codebooks).
    pub fn key_bytes(&self, d: usize) -> f64 {
        match self {
            Scheme::Fp16 => 2.0 * d as f64,
            Scheme::Int8PerTensor | Scheme::Int8PerChannel => d as f64,
            Scheme::Int4PerTensor | Scheme::Int4PerChannel => d as f64 / 2.0,
            Scheme::Lookat { subspaces } => *subspaces as f64,
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
        Scheme::Lookat { .. } => unreachable!("LOOKAT keys are never dequantized"),
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

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0f64; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
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

fn top(x: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Compares approximate scores with exact ones for one query over `T` visible tokens.
pub fn compare(exact: &[f64], approx: &[f64], values: &[f32], d: usize) -> Metrics {
    let (p, q) = (softmax(exact), softmax(approx));
    let mut o = vec![0f64; d];
    let mut oa = vec![0f64; d];
    for (t, row) in values.chunks_exact(d).enumerate().take(exact.len()) {
        for j in 0..d {
            o[j] += p[t] * row[j] as f64;
            oa[j] += q[t] * row[j] as f64;
        }
    }
    let dot: f64 = o.iter().zip(&oa).map(|(a, b)| a * b).sum();
    let norm =
        (o.iter().map(|x| x * x).sum::<f64>() * oa.iter().map(|x| x * x).sum::<f64>()).sqrt();
    let kl: f64 = p
        .iter()
        .zip(&q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a.ln() - b.max(1e-300).ln()))
        .sum();
    let k = exact.len().min(5);
    let (te, ta) = (top(exact, k), top(approx, k));
    let overlap = te.iter().filter(|i| ta.contains(i)).count() as f64 / k as f64;
    Metrics {
        cosine: if norm > 0.0 { dot / norm } else { 1.0 },
        kl: kl.max(0.0),
        spearman: if exact.len() > 1 {
            pearson(&ranks(exact), &ranks(approx))
        } else {
            1.0
        },
        top5: overlap,
        count: 1,
    }
}

/// `scale · q·k_t` in f64 for the first `visible` keys of `[T, D]`.
fn scaled_scores(q: &[f32], keys: &[f32], d: usize, visible: usize, scale: f64) -> Vec<f64> {
    keys.chunks_exact(d)
        .take(visible)
        .map(|k| {
            q.iter()
                .zip(k)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
                * scale
        })
        .collect()
}

/// One head of one window: queries at `positions` against keys `[T, D]` and values `[T, D]`.
/// `codebook` (one head's, prepared) is used for LOOKAT schemes.
pub fn head_metrics(
    queries: &[&[f32]],
    positions: &[usize],
    keys: &[f32],
    values: &[f32],
    d: usize,
    scheme: Scheme,
    codebook: Option<&PreparedCodebook>,
) -> Metrics {
    let scale = 1.0 / (d as f64).sqrt();
    let t_n = keys.len() / d;
    let approx_keys = match scheme {
        Scheme::Lookat { .. } => None,
        s => Some(scalar_roundtrip(keys, d, s)),
    };
    let codes = match (scheme, codebook) {
        (Scheme::Lookat { subspaces }, Some(book)) => {
            let mut c = vec![0u8; t_n * subspaces];
            book.encode_keys(t_n, |t| &keys[t * d..(t + 1) * d], &mut c);
            Some((c, subspaces, book, book.centroids()))
        }
        _ => None,
    };
    let mut m = Metrics::default();
    for (&q, &pos) in queries.iter().zip(positions) {
        let visible = pos + 1;
        let exact = scaled_scores(q, keys, d, visible, scale);
        let approx: Vec<f64> = if let Some((codes, sub, book, k)) = &codes {
            let mut lut = vec![0f32; sub * k];
            book.build_lut(q, scale as f32, &mut lut);
            let mut s = vec![0f32; visible];
            adc_scores(&lut, &codes[..visible * sub], *k, *sub, &mut s);
            s.into_iter().map(f64::from).collect()
        } else {
            scaled_scores(
                q,
                approx_keys.as_deref().expect("scalar keys"),
                d,
                visible,
                scale,
            )
        };
        m.add(&compare(&exact, &approx, values, d));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

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
