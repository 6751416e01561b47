//! `--budget`: how many subspaces each layer gets, chosen under a byte budget from measured
//! sensitivity.
//!
//! Every layer is calibrated at each candidate m (the rewritten model's m, halved up to three
//! times). A layer's sensitivity at m is its expected squared score error in logits,
//! `scale²·E[(q·(k − q(k)))²]`, over its collected keys and the second moment of the queries that
//! read them — the quantity that moves its softmax. The allocation then minimises the summed error
//! with the mean m over layers (weighted by kv heads) within the budget.

use anyhow::{bail, Result};

use lookat_contract::CodebookShape;

/// The candidate numbers of subspaces below the rewritten model's `max_m`, ascending: `max_m`
/// halved while it stays a whole number, at most three times.
pub fn candidates(max_m: usize) -> Vec<usize> {
    let mut out = vec![max_m];
    while out.len() < 4 && out[0] % 2 == 0 {
        out.insert(0, out[0] / 2);
    }
    out
}

/// `Bᵀ·S·B` for a `d × d` second moment `s` of row vectors `x` and `b` (row-major `[D, D]`): the
/// second moment of `x·B`.
pub fn moved_moment(s: &[f64], b: &[f32], d: usize) -> Vec<f64> {
    let mut sb = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let v = s[i * d + k];
            for j in 0..d {
                sb[i * d + j] += v * b[k * d + j] as f64;
            }
        }
    }
    let mut out = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let v = b[k * d + i] as f64;
            for j in 0..d {
                out[i * d + j] += v * sb[k * d + j];
            }
        }
    }
    out
}

/// `scale²·eᵀ·S·e` averaged over `residuals` (each `d` floats): the mean squared score error of
/// quantization residuals `e` against queries of second moment `s`.
pub fn mean_score_error<'a>(
    residuals: impl Iterator<Item = &'a [f32]>,
    s: &[f64],
    d: usize,
    scale: f64,
) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for e in residuals {
        let mut quad = 0f64;
        for i in 0..d {
            let row = &s[i * d..(i + 1) * d];
            let se: f64 = row.iter().zip(e).map(|(&a, &x)| a * x as f64).sum();
            quad += e[i] as f64 * se;
        }
        sum += quad;
        n += 1;
    }
    scale * scale * sum / n.max(1) as f64
}

/// One layer's measured sensitivity: `(m, score error)` per candidate, ascending in m.
#[derive(Debug, Clone)]
pub struct Sensitivity {
    pub kv_heads: usize,
    pub errors: Vec<(usize, f64)>,
}

/// The m of each layer that minimises the summed score error with the mean m over layers
/// (weighted by kv heads) at most `budget`: a multiple-choice knapsack, solved exactly by dynamic
/// programming over whole bytes (a greedy pass by error per byte stalls short of the budget when
/// the last affordable step is a small one). Ties go to fewer bytes. Fails, naming `--budget`,
/// when the budget is below the smallest candidate.
pub fn allocate(layers: &[Sensitivity], budget: f64) -> Result<Vec<usize>> {
    let weight: usize = layers.iter().map(|l| l.kv_heads).sum();
    let limit = (budget * weight as f64 + 1e-9).floor();
    let floor: usize = layers.iter().map(|l| l.kv_heads * l.errors[0].0).sum();
    if limit.is_nan() || limit < floor as f64 {
        let smallest = layers.iter().map(|l| l.errors[0].0).max().unwrap_or(0);
        bail!(
            "--budget {budget} is below the smallest number of subspaces a layer can have here \
             ({smallest} B/key/head): raise it, or rewrite with smaller --subspaces"
        );
    }
    // More bytes than every layer at its largest m cannot be spent.
    let ceiling: usize = layers
        .iter()
        .map(|l| l.kv_heads * l.errors.last().map_or(0, |e| e.0))
        .sum();
    let limit = (limit as usize).min(ceiling);
    // best[c]: the least summed error of the layers so far within c bytes; choice[l][c]: the
    // candidate layer l takes there.
    let mut best = vec![0f64; limit + 1];
    let mut choice = vec![vec![usize::MAX; limit + 1]; layers.len()];
    for (l, layer) in layers.iter().enumerate() {
        let mut next = vec![f64::INFINITY; limit + 1];
        for c in 0..=limit {
            for (i, &(m, err)) in layer.errors.iter().enumerate() {
                let cost = layer.kv_heads * m;
                if cost <= c && best[c - cost] + err < next[c] {
                    next[c] = best[c - cost] + err;
                    choice[l][c] = i;
                }
            }
        }
        best = next;
    }
    let mut out = vec![0; layers.len()];
    let mut c = limit;
    for l in (0..layers.len()).rev() {
        let i = choice[l][c];
        let (m, _) = layers[l].errors[i];
        out[l] = m;
        c -= layers[l].kv_heads * m;
    }
    Ok(out)
}

/// `shape` with `m` subspaces (same heads, head size and centroids).
pub fn with_subspaces(shape: CodebookShape, m: usize) -> Option<CodebookShape> {
    CodebookShape::new(shape.heads, shape.head_dim(), m, shape.centroids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::Rng;

    fn sens(kv_heads: usize, errors: &[(usize, f64)]) -> Sensitivity {
        Sensitivity {
            kv_heads,
            errors: errors.to_vec(),
        }
    }

    /// `n` layers of 1 to 3 kv heads whose errors fall with m, sometimes not at all.
    fn random_layers(rng: &mut Rng, n: usize) -> Vec<Sensitivity> {
        (0..n)
            .map(|_| {
                let kv = 1 + (rng.unit() * 3.0) as usize;
                let mut e = 1.0 + 10.0 * rng.unit();
                let errors: Vec<(usize, f64)> = [2usize, 4, 8, 16]
                    .iter()
                    .map(|&m| {
                        let here = (m, e);
                        e *= if rng.unit() < 0.2 { 1.0 } else { rng.unit() };
                        here
                    })
                    .collect();
                sens(kv, &errors)
            })
            .collect()
    }

    #[test]
    fn candidates_halve_the_rewritten_m() {
        assert_eq!(candidates(16), vec![2, 4, 8, 16]);
        assert_eq!(candidates(4), vec![1, 2, 4]);
        assert_eq!(candidates(12), vec![3, 6, 12]);
        assert_eq!(candidates(1), vec![1]);
    }

    #[test]
    fn allocation_spends_bytes_where_the_error_falls_most() {
        // Layer 0 barely cares, layer 1 is sensitive: the budget goes to layer 1.
        let flat = sens(3, &[(4, 1.0), (8, 0.99), (16, 0.98)]);
        let steep = sens(3, &[(4, 9.0), (8, 3.0), (16, 0.5)]);
        assert_eq!(
            allocate(&[flat.clone(), steep.clone()], 10.0).unwrap(),
            vec![4, 16]
        );
        // The mean m stays within the budget; the whole budget buys the largest m everywhere.
        assert_eq!(
            allocate(&[flat.clone(), steep.clone()], 16.0).unwrap(),
            vec![16, 16]
        );
        assert_eq!(
            allocate(&[flat.clone(), steep.clone()], 4.0).unwrap(),
            vec![4, 4]
        );
        let err = allocate(&[flat, steep], 3.0).unwrap_err().to_string();
        assert!(
            err.contains("--budget 3") && err.contains("4 B/key/head"),
            "{err}"
        );
    }

    #[test]
    fn allocation_is_the_exhaustive_optimum() {
        let mut rng = Rng::new(11);
        for case in 0..300 {
            let layers = random_layers(&mut rng, 1 + case % 5);
            let budget = 2.0 + 14.0 * rng.unit();
            let weight: usize = layers.iter().map(|l| l.kv_heads).sum();
            // Every combination of candidates.
            let mut want = f64::INFINITY;
            for code in 0..4usize.pow(layers.len() as u32) {
                let pick: Vec<usize> = (0..layers.len())
                    .map(|l| code / 4usize.pow(l as u32) % 4)
                    .collect();
                let bytes: usize = layers
                    .iter()
                    .zip(&pick)
                    .map(|(l, &i)| l.kv_heads * l.errors[i].0)
                    .sum();
                if bytes as f64 <= budget * weight as f64 {
                    want = want.min(layers.iter().zip(&pick).map(|(l, &i)| l.errors[i].1).sum());
                }
            }
            let ms = allocate(&layers, budget).unwrap();
            let got: f64 = layers
                .iter()
                .zip(&ms)
                .map(|(l, &m)| l.errors.iter().find(|e| e.0 == m).unwrap().1)
                .sum();
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "case {case}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn allocation_respects_the_budget_and_never_takes_a_useless_step() {
        let mut rng = Rng::new(7);
        for case in 0..200 {
            let layers = random_layers(&mut rng, 1 + case % 6);
            let budget = 2.0 + 14.0 * rng.unit();
            let ms = allocate(&layers, budget).unwrap();
            let weight: usize = layers.iter().map(|l| l.kv_heads).sum();
            let spent: usize = layers.iter().zip(&ms).map(|(l, &m)| l.kv_heads * m).sum();
            assert!(spent as f64 <= budget * weight as f64 + 1e-9, "case {case}");
            for (l, &m) in layers.iter().zip(&ms) {
                let i = l.errors.iter().position(|e| e.0 == m).unwrap();
                assert!(i == 0 || l.errors[i].1 < l.errors[i - 1].1, "case {case}");
            }
        }
    }

    #[test]
    fn score_error_equals_a_naive_f64_reference() {
        let mut rng = Rng::new(3);
        let d = 8;
        let queries: Vec<Vec<f64>> = (0..50)
            .map(|_| (0..d).map(|_| rng.unit() * 2.0 - 1.0).collect())
            .collect();
        let b: Vec<f32> = (0..d * d)
            .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
            .collect();
        let residuals: Vec<f32> = (0..20 * d).map(|_| (rng.unit() - 0.5) as f32).collect();
        // Second moment of the queries, then of the moved queries q·B.
        let mut s = vec![0f64; d * d];
        for q in &queries {
            for i in 0..d {
                for j in 0..d {
                    s[i * d + j] += q[i] * q[j] / queries.len() as f64;
                }
            }
        }
        let moved = moved_moment(&s, &b, d);
        let got = mean_score_error(residuals.chunks_exact(d), &moved, d, 0.125);
        // Naive: mean over residuals and queries of (0.125 · (q·B)·e)².
        let mut want = 0f64;
        for e in residuals.chunks_exact(d) {
            for q in &queries {
                let qb: Vec<f64> = (0..d)
                    .map(|j| (0..d).map(|i| q[i] * b[i * d + j] as f64).sum())
                    .collect();
                let score: f64 = qb.iter().zip(e).map(|(a, &x)| a * x as f64).sum();
                want += (0.125 * score).powi(2);
            }
        }
        want /= (residuals.len() / d * queries.len()) as f64;
        assert!(
            (got - want).abs() <= 1e-9 * want.max(1e-30),
            "{got} vs {want}"
        );
    }
}
