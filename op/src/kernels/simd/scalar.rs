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

/// `acc[c] += Σ_t probs[t] · rows[t·D + c]` (`D = acc.len()`), skipping rows whose probability is
/// exactly 0, and copying every row to `copy_to` when given.
pub fn accumulate_rows<V: Copy>(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[V],
    copy_to: Option<&mut [V]>,
    to_f32: impl Fn(V) -> f32,
) {
    let d = acc.len();
    if let Some(dst) = copy_to {
        dst.copy_from_slice(rows);
    }
    for (&p, row) in probs.iter().zip(rows.chunks_exact(d)) {
        if p != 0.0 {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += p * to_f32(v);
            }
        }
    }
}

pub fn accumulate_rows_f32(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f32],
    copy_to: Option<&mut [f32]>,
) {
    accumulate_rows(acc, probs, rows, copy_to, |v| v)
}

pub fn accumulate_rows_f16(
    acc: &mut [f32],
    probs: &[f32],
    rows: &[f16],
    copy_to: Option<&mut [f16]>,
) {
    accumulate_rows(acc, probs, rows, copy_to, f16::to_f32)
}
