//! Seeded k-means: k-means++ seeding, Lloyd iterations, empty-cluster repair. One call is
//! single-threaded and depends only on its inputs and seed, so running many calls in parallel
//! gives the same centroids whatever the thread count.

/// SplitMix64: small, fast, seedable; enough for sampling.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A seed for one job, mixed from the run's seed and the job's coordinates.
pub fn job_seed(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(Rng::new(seed).next_u64(), |acc, &p| {
        Rng::new(acc ^ p.wrapping_mul(0x2545_F491_4F6C_DD1D)).next_u64()
    })
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index and squared distance of the centroid nearest to `x`.
pub fn nearest(x: &[f32], centroids: &[f32], d: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (c, cent) in centroids.chunks_exact(d).enumerate() {
        let dd = dist2(x, cent);
        if dd < best.1 {
            best = (c, dd);
        }
    }
    best
}

/// The centroids transposed to `[d][k]`, so that the distances of one point to every centroid
/// are computed centroid-parallel: short sub-vectors (d = 1, 2, ...) then vectorize as well as
/// long ones, where a loop per centroid would pay its overhead for one or two multiplies.
struct Transposed {
    t: Vec<f32>,
    k: usize,
    dists: Vec<f32>,
}

impl Transposed {
    fn new(centroids: &[f32], d: usize, k: usize) -> Transposed {
        let mut t = vec![0f32; d * k];
        for (c, cent) in centroids.chunks_exact(d).enumerate() {
            for (i, &v) in cent.iter().enumerate() {
                t[i * k + c] = v;
            }
        }
        Transposed {
            t,
            k,
            dists: vec![0f32; k],
        }
    }

    /// What [`nearest`] returns for `x`: each distance summed over the dimensions in the same
    /// order, the first index of the smallest (NaN never chosen), so the results are identical.
    fn nearest(&mut self, x: &[f32]) -> (usize, f32) {
        let k = self.k;
        self.dists.fill(0.0);
        for (i, &xi) in x.iter().enumerate() {
            for (acc, &c) in self.dists.iter_mut().zip(&self.t[i * k..(i + 1) * k]) {
                let t = xi - c;
                *acc += t * t;
            }
        }
        let c = lookat_op::kernels::argmin(&self.dists);
        if self.dists[c] < f32::INFINITY {
            (c, self.dists[c])
        } else {
            (0, f32::INFINITY)
        }
    }
}

/// `k` centroids of `points` (`n × d`, row-major) after at most `iters` Lloyd iterations.
/// Never returns NaN: with fewer distinct points than `k`, some centroids repeat a point.
pub fn kmeans(points: &[f32], d: usize, k: usize, iters: usize, seed: u64) -> Vec<f32> {
    assert!(d > 0 && k > 0 && points.len().is_multiple_of(d));
    let n = points.len() / d;
    assert!(n > 0, "k-means needs at least one point");
    let point = |i: usize| &points[i * d..(i + 1) * d];
    let mut rng = Rng::new(seed);

    // k-means++: each next centroid drawn with probability proportional to D².
    let mut centroids = Vec::with_capacity(k * d);
    centroids.extend_from_slice(point(rng.below(n)));
    let mut closest: Vec<f32> = (0..n).map(|i| dist2(point(i), &centroids[..d])).collect();
    for _ in 1..k {
        let total: f64 = closest.iter().map(|&x| x as f64).sum();
        let pick = if total > 0.0 {
            let mut target = rng.unit() * total;
            let mut chosen = n - 1;
            for (i, &w) in closest.iter().enumerate() {
                target -= w as f64;
                if target < 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.below(n) // every point already is a centroid
        };
        let start = centroids.len();
        centroids.extend_from_slice(point(pick));
        let newest = centroids[start..].to_vec();
        for (i, c) in closest.iter_mut().enumerate() {
            *c = c.min(dist2(point(i), &newest));
        }
    }

    let mut assign = vec![usize::MAX; n];
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![0usize; k];
    let mut dists = vec![0f32; n];
    for _ in 0..iters {
        let mut changed = false;
        let mut by_centroid = Transposed::new(&centroids, d, k);
        for i in 0..n {
            let (c, dd) = by_centroid.nearest(point(i));
            dists[i] = dd;
            if assign[i] != c {
                assign[i] = c;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        sums.fill(0.0);
        counts.fill(0);
        for (i, &c) in assign.iter().enumerate() {
            counts[c] += 1;
            for (s, &x) in sums[c * d..(c + 1) * d].iter_mut().zip(point(i)) {
                *s += x as f64;
            }
        }
        // Empty clusters take the points farthest from their centroids, farthest first.
        let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
        if !empty.is_empty() {
            let mut far: Vec<usize> = (0..n).collect();
            far.sort_by(|&a, &b| dists[b].total_cmp(&dists[a]).then(a.cmp(&b)));
            let movable: Vec<usize> = far.into_iter().take_while(|&i| dists[i] > 0.0).collect();
            for (&c, &i) in empty.iter().zip(&movable) {
                let old = assign[i];
                counts[old] -= 1;
                for (s, &x) in sums[old * d..(old + 1) * d].iter_mut().zip(point(i)) {
                    *s -= x as f64;
                }
                assign[i] = c;
                counts[c] = 1;
                for (s, &x) in sums[c * d..(c + 1) * d].iter_mut().zip(point(i)) {
                    *s = x as f64;
                }
                dists[i] = 0.0;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for (cv, &s) in centroids[c * d..(c + 1) * d]
                    .iter_mut()
                    .zip(&sums[c * d..(c + 1) * d])
                {
                    *cv = (s / counts[c] as f64) as f32;
                }
            }
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_planted_clusters() {
        let mut rng = Rng::new(1);
        let d = 4;
        let centers: Vec<Vec<f32>> = (0..8)
            .map(|c| {
                (0..d)
                    .map(|j| ((c * 7 + j * 3) % 11) as f32 * 10.0)
                    .collect()
            })
            .collect();
        let mut points = vec![];
        for i in 0..800 {
            let c = &centers[i % 8];
            points.extend(c.iter().map(|&x| x + (rng.unit() as f32 - 0.5) * 0.2));
        }
        let found = kmeans(&points, d, 8, 50, 42);
        for c in &centers {
            let (_, dd) = nearest(c, &found, d);
            assert!(
                dd < 0.01,
                "planted center {c:?} not recovered (distance² {dd})"
            );
        }
    }

    #[test]
    fn fewer_distinct_points_than_k_gives_no_nan() {
        let points = vec![1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 1.0, 2.0];
        let c = kmeans(&points, 2, 16, 10, 7);
        assert_eq!(c.len(), 32);
        assert!(c.iter().all(|x| x.is_finite()));
        for p in points.chunks(2) {
            assert_eq!(nearest(p, &c, 2).1, 0.0);
        }
        let single = kmeans(&[5.0], 1, 256, 5, 1);
        assert!(single.iter().all(|&x| x == 5.0));
    }

    #[test]
    fn transposed_search_equals_the_plain_scan() {
        let mut rng = Rng::new(3);
        for (d, k) in [(1, 256), (2, 256), (4, 16), (16, 256), (3, 5)] {
            let cents: Vec<f32> = (0..d * k).map(|_| rng.unit() as f32 * 4.0 - 2.0).collect();
            let mut t = Transposed::new(&cents, d, k);
            for _ in 0..500 {
                // Coarse values make exact ties common: the first index must win in both.
                let x: Vec<f32> = (0..d).map(|_| (rng.below(9) as f32 - 4.0) * 0.5).collect();
                assert_eq!(t.nearest(&x), nearest(&x, &cents, d), "d={d} k={k} x={x:?}");
            }
            let mut ties = cents.clone();
            ties[d..2 * d].copy_from_slice(&cents[..d]);
            let mut t = Transposed::new(&ties, d, k);
            assert_eq!(t.nearest(&cents[..d]), (0, 0.0));
        }
    }

    #[test]
    fn same_seed_same_result_other_seed_other_start() {
        let mut rng = Rng::new(9);
        let points: Vec<f32> = (0..3000).map(|_| rng.unit() as f32).collect();
        assert_eq!(kmeans(&points, 3, 32, 10, 5), kmeans(&points, 3, 32, 10, 5));
        assert_ne!(kmeans(&points, 3, 32, 10, 5), kmeans(&points, 3, 32, 10, 6));
    }
}
