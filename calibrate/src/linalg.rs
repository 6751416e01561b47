//! The small dense linear algebra calibration needs, in f64: symmetric eigendecomposition (cyclic
//! Jacobi; D = 64 matrices take microseconds) and the key/query transforms built from it.

/// Eigenvalues (descending) and eigenvectors (columns of a row-major `n×n` matrix, in the same
/// order) of the symmetric matrix `a` (row-major `n×n`).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "matrix size");
    let mut m = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Rotate rows/columns p and q of m, and columns p and q of v.
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| m[y * n + y].total_cmp(&m[x * n + x]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = vec![0f64; n * n];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + col] = v[k * n + i];
        }
    }
    (values, vectors)
}

/// `a·b` of row-major `n×n` matrices.
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * n];
    for i in 0..n {
        for l in 0..n {
            let ail = a[i * n + l];
            for j in 0..n {
                out[i * n + j] += ail * b[l * n + j];
            }
        }
    }
    out
}

/// `Σ^p` of a symmetric positive semi-definite matrix, eigenvalues floored at `floor · λ_max`
/// (so that `p < 0` stays finite on directions the data never uses).
pub fn spd_power(sigma: &[f64], n: usize, p: f64, floor: f64) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(sigma, n);
    let top = values
        .first()
        .copied()
        .unwrap_or(0.0)
        .max(f64::MIN_POSITIVE);
    let mut out = vec![0f64; n * n];
    for (k, &lambda) in values.iter().enumerate() {
        let w = lambda.max(floor * top).powf(p);
        for i in 0..n {
            let vik = vectors[i * n + k] * w;
            for j in 0..n {
                out[i * n + j] += vik * vectors[j * n + k];
            }
        }
    }
    out
}

/// An orthogonal `n×n` matrix whose columns are the eigenvectors of `cov`, grouped into
/// `subspaces` blocks of `n / subspaces` columns so that every block gets a similar share of the
/// variance (OPQ's eigenvalue allocation: the largest remaining eigenvalue goes to the block with
/// the smallest product of eigenvalues so far that still has room). Product quantization then
/// spends its codes evenly instead of on a few dominant directions.
pub fn balanced_pca_rotation(cov: &[f64], n: usize, subspaces: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(cov, n);
    let per = n / subspaces;
    let top = values
        .first()
        .copied()
        .unwrap_or(0.0)
        .max(f64::MIN_POSITIVE);
    let mut log_product = vec![0f64; subspaces];
    let mut filled = vec![0usize; subspaces];
    let mut rotation = vec![0f64; n * n];
    for (k, &lambda) in values.iter().enumerate() {
        let block = (0..subspaces)
            .filter(|&b| filled[b] < per)
            .min_by(|&a, &b| log_product[a].total_cmp(&log_product[b]).then(a.cmp(&b)))
            .expect("a block has room");
        let col = block * per + filled[block];
        filled[block] += 1;
        log_product[block] += lambda.max(1e-12 * top).ln();
        for i in 0..n {
            rotation[i * n + col] = vectors[i * n + k];
        }
    }
    rotation
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `G·diag(1, 2², …)·Gᵀ + 0.1·I` for a random G: symmetric positive definite, eigenvalues
    /// spread over a few orders of magnitude.
    fn random_spd(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::kmeans::Rng::new(seed);
        let g: Vec<f64> = (0..n * n).map(|_| rng.unit() * 2.0 - 1.0).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n)
                    .map(|k| g[i * n + k] * g[j * n + k] * ((1 + k) * (1 + k)) as f64)
                    .sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn eigen_reconstructs_and_is_orthonormal() {
        for n in [1, 2, 5, 16, 64] {
            let a = random_spd(n, n as u64);
            let (values, v) = symmetric_eigen(&a, n);
            assert!(values.windows(2).all(|w| w[0] >= w[1]));
            for i in 0..n {
                for j in 0..n {
                    let vtv: f64 = (0..n).map(|k| v[k * n + i] * v[k * n + j]).sum();
                    assert!((vtv - f64::from(u8::from(i == j))).abs() < 1e-9, "n={n}");
                    let rec: f64 = (0..n)
                        .map(|k| v[i * n + k] * values[k] * v[j * n + k])
                        .sum();
                    assert!((rec - a[i * n + j]).abs() < 1e-8 * (1.0 + a[i * n + j].abs()));
                }
            }
        }
    }

    #[test]
    fn powers_invert_and_rotation_balances() {
        let n = 16;
        let a = random_spd(n, 3);
        let (half, inv_half) = (spd_power(&a, n, 0.5, 0.0), spd_power(&a, n, -0.5, 0.0));
        let id = matmul(&half, &inv_half, n);
        for i in 0..n {
            for j in 0..n {
                assert!((id[i * n + j] - f64::from(u8::from(i == j))).abs() < 1e-6);
            }
        }
        let sq = matmul(&half, &half, n);
        for (x, y) in sq.iter().zip(&a) {
            assert!((x - y).abs() < 1e-8 * (1.0 + y.abs()));
        }
        let r = balanced_pca_rotation(&a, n, 4);
        let rtr = matmul(
            &(0..n * n)
                .map(|k| r[(k % n) * n + k / n])
                .collect::<Vec<_>>(),
            &r,
            n,
        );
        for i in 0..n {
            for j in 0..n {
                assert!((rtr[i * n + j] - f64::from(u8::from(i == j))).abs() < 1e-9);
            }
        }
        // Variance per block after the rotation: within a factor of the mean.
        let rotated = matmul(
            &matmul(
                &(0..n * n)
                    .map(|k| r[(k % n) * n + k / n])
                    .collect::<Vec<_>>(),
                &a,
                n,
            ),
            &r,
            n,
        );
        let blocks: Vec<f64> = (0..4)
            .map(|b| {
                (0..4)
                    .map(|i| rotated[(b * 4 + i) * n + b * 4 + i].ln())
                    .sum()
            })
            .collect();
        let spread = blocks.iter().cloned().fold(f64::MIN, f64::max)
            - blocks.iter().cloned().fold(f64::MAX, f64::min);
        let (values, _) = symmetric_eigen(&a, n);
        let naive: f64 = values[..4].iter().map(|v| v.ln()).sum::<f64>()
            - values[12..].iter().map(|v| v.ln()).sum::<f64>();
        assert!(
            spread < naive / 2.0,
            "balanced {spread} vs in-order {naive}"
        );
    }
}
