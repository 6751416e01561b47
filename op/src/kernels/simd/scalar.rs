//! Portable reference versions.

use half::f16;

pub fn axpy_f32(acc: &mut [f32], p: f32, row: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += p * v;
    }
}

pub fn axpy_f16(acc: &mut [f32], p: f32, row: &[f16]) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += p * v.to_f32();
    }
}
