//! Portable reference versions: what the SIMD paths are tested against, and what runs where no
//! SIMD path exists (or with `LOOKAT_FORCE_SCALAR`).

use half::f16;

/// `x[i] = exp(x[i] - shift)`; `-inf` gives exactly 0. Returns the sum of the results.
pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for v in x {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// The largest value, NaN ignored; `-inf` for none.
pub fn max(x: &[f32]) -> f32 {
    x.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `acc[q][c] += Σ_t probs[q][t] · rows[t·D + c]` (`D = acc[q].len()`) for each query of a
/// group, skipping rows whose probability is exactly 0, and copying every row to `copy_to` when
/// given.
pub fn accumulate_rows<V: Copy>(
    acc: &mut [&mut [f32]],
    probs: &[&[f32]],
    rows: &[V],
    mut copy_to: Option<&mut [V]>,
    to_f32: impl Fn(V) -> f32,
) {
    super::group_shape(acc, probs, rows.len(), 0);
    for (q, (a, p)) in acc.iter_mut().zip(probs).enumerate() {
        let copy_to = if q == 0 { copy_to.as_deref_mut() } else { None };
        accumulate_columns(a, p, rows, copy_to, 0, &to_f32);
    }
}

/// [`accumulate_rows`] restricted to columns `from..D` (of the sums and of the copy): all of it for
/// the scalar path, the columns the SIMD strips leave for the others.
pub fn accumulate_columns<V: Copy>(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[V],
    mut copy_to: Option<&mut [V]>,
    from: usize,
    to_f32: impl Fn(V) -> f32,
) {
    let d = acc.len();
    if from >= d {
        return;
    }
    for (t, (&p, row)) in probs.iter().zip(rows.chunks_exact(d)).enumerate() {
        if let Some(dst) = copy_to.as_deref_mut() {
            dst[t * d + from..(t + 1) * d].copy_from_slice(&row[from..]);
        }
        if p != 0.0 {
            for (a, &v) in acc[from..].iter_mut().zip(&row[from..]) {
                *a += p * to_f32(v);
            }
        }
    }
}

pub fn accumulate_rows_f32(
    acc: &mut [&mut [f32]],
    probs: &[&[f32]],
    rows: &[f32],
    copy_to: Option<&mut [f32]>,
) {
    accumulate_rows(acc, probs, rows, copy_to, |v| v)
}

pub fn accumulate_rows_f16(
    acc: &mut [&mut [f32]],
    probs: &[&[f32]],
    rows: &[f16],
    copy_to: Option<&mut [f16]>,
) {
    accumulate_rows(acc, probs, rows, copy_to, f16::to_f32)
}

/// [`accumulate_int8`] over all columns, for each query of a group.
pub fn accumulate_rows_int8(acc: &mut [&mut [f32]], weights: &[&[f32]], rows: &[i8]) {
    super::group_shape(acc, weights, rows.len(), 4);
    for (a, w) in acc.iter_mut().zip(weights) {
        accumulate_int8(a, w, rows, 0);
    }
}

/// [`super::lanes::Lanes::scale_weights`] one row at a time.
pub fn scale_weights(out: &mut [f32], weights: &[f32], rows: &[i8], stride: usize, at: usize) {
    for ((o, &w), row) in out.iter_mut().zip(weights).zip(rows.chunks_exact(stride)) {
        *o = if w != 0.0 {
            w * crate::kernels::value::int8_row_scale(&row[..at + 4])
        } else {
            0.0
        };
    }
}

/// `acc[c] += Σ_t weights[t] · scale_t · rows[t·(D + 4) + c]` for columns `from..D` of int8 rows
/// (D values, then the row's float32 scale), skipping rows of weight exactly 0.
pub fn accumulate_int8(acc: &mut [f32], weights: &[f32], rows: &[i8], from: usize) {
    let d = acc.len();
    if from >= d {
        return;
    }
    for (&w, row) in weights.iter().zip(rows.chunks_exact(d + 4)) {
        if w != 0.0 {
            let w = w * crate::kernels::value::int8_row_scale(row);
            for (a, &v) in acc[from..].iter_mut().zip(&row[from..d]) {
                *a += w * v as f32;
            }
        }
    }
}

/// [`super::query_key_dots`] in plain loops (sums in the same order).
#[allow(clippy::too_many_arguments)]
pub fn query_key_dots(
    xs: &[f32],
    n: usize,
    d: usize,
    kt: &[f32],
    stride: usize,
    widths: &[usize],
    out: &mut [f32],
    ld: usize,
) {
    for q in 0..n {
        let x = &xs[q * d..(q + 1) * d];
        for t in 0..widths[q / super::PRODUCT_QUERIES].next_multiple_of(super::PRODUCT_TILE) {
            out[q * ld + t] = x
                .iter()
                .enumerate()
                .fold(0.0, |sum, (i, &xi)| sum + xi * kt[i * stride + t]);
        }
    }
}

/// [`super::weighted_rows`] in plain loops.
pub fn weighted_rows(
    p: &[f32],
    ld: usize,
    n: usize,
    widths: &[usize],
    v: &[f32],
    d: usize,
    out: &mut [f32],
) {
    for q in 0..n {
        let o = &mut out[q * d..(q + 1) * d];
        o.fill(0.0);
        for t in 0..widths[q / super::PRODUCT_QUERIES] {
            let w = p[q * ld + t];
            for (o, &x) in o.iter_mut().zip(&v[t * d..(t + 1) * d]) {
                *o += w * x;
            }
        }
    }
}
