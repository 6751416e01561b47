//! Where the time of one LookatAttention call goes, kernel by kernel, on one thread, without
//! ONNX Runtime (not a test; `scripts/bench.py` is the side-by-side benchmark). Prints the best
//! of several runs for each phase at H = 12, D = 64, K = 256:
//!
//!     cargo run --release -p lookat-op --example kernel_phases [-- T m]
//!
//! Phases of a decode step (S = 1) over a T-token cache: table build, scoring (ADC), softmax
//! weights (exp), value accumulation with the past -> present copy and without (a shared buffer's
//! read, float16 and int8 rows), and the whole call; and of a
//! prefill (S = T): key encoding, table build, and the whole call.

use std::time::Instant;

use half::f16;
use lookat_op::kernels::{
    adc_scores, lookat_attention, simd, AttentionInputs, AttentionOptions, AttentionOutputs,
    Geometry, PreparedCodebooks, Serial, ValueElem,
};

const H: usize = 12;
const D: usize = 64;
const K: usize = 256;

fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Deterministic pseudo-random floats in [-1, 1).
fn floats(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn call<V: ValueElem>(t: usize, s: usize, m: usize, books: &PreparedCodebooks, raw: &[f32]) -> f64 {
    let p = t - s;
    let g = Geometry::multi_head(1, H, D, s, p, m, K);
    let (q, k, v) = (
        floats(s * H * D, 1),
        floats(s * H * D, 2),
        floats(s * H * D, 3),
    );
    let codes: Vec<u8> = floats(H * p * m, 4)
        .iter()
        .map(|x| (x.abs() * 255.0) as u8)
        .collect();
    let past: Vec<V> = floats(H * p * D, 5).into_iter().map(V::from_f32).collect();
    let mut out = vec![0.0f32; s * H * D];
    let mut present_codes = vec![0u8; H * t * m];
    let mut present_values = vec![V::from_f32(0.0); H * t * D];
    best_ms(if s == 1 { 30 } else { 3 }, || {
        lookat_attention(
            &g,
            &AttentionOptions::default(),
            &AttentionInputs {
                query: &q,
                key: &k,
                value: &v,
                past_key_codes: &codes,
                past_value: &past,
                past_in_present: false,
                attention_mask: None,
                codebooks: raw,
                prepared: Some(books),
                past_key_window: &[],
                transforms: None,
            },
            AttentionOutputs {
                output: &mut out,
                present_key_codes: &mut present_codes,
                present_value: &mut present_values,
                present_key_window: &mut [],
            },
            &Serial,
        )
        .expect("kernel call");
    })
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("T m"))
        .collect();
    let (t, m) = (
        args.first().copied().unwrap_or(4096),
        args.get(1).copied().unwrap_or(4),
    );
    let sub = D / m;
    let raw = floats(H * m * K * sub, 9);
    let books = PreparedCodebooks::new(&raw, H, m, K, sub);
    println!(
        "one thread, SIMD {}, H={H} D={D} K={K} m={m}, T={t}",
        simd::simd_level()
    );

    let q = floats(H * D, 11);
    let mut luts = vec![0.0f32; H * m * K];
    let lut_ms = best_ms(50, || {
        for h in 0..H {
            books
                .head(h)
                .build_lut(&q[h * D..][..D], 0.125, &mut luts[h * m * K..][..m * K]);
        }
    });
    let codes: Vec<u8> = floats(H * t * m, 4)
        .iter()
        .map(|x| (x.abs() * 255.0) as u8)
        .collect();
    let mut scores = vec![0.0f32; H * t];
    let adc_ms = best_ms(30, || {
        for h in 0..H {
            let lut = &luts[h * m * K..][..m * K];
            adc_scores(
                lut,
                &codes[h * t * m..][..t * m],
                K,
                m,
                &mut scores[h * t..][..t],
            );
        }
    });
    let mut weights = scores.clone();
    let exp_ms = best_ms(30, || {
        weights.copy_from_slice(&scores);
        simd::exp_shifted(&mut weights, 4.0);
    });
    let values32 = floats(H * t * D, 5);
    let values16: Vec<f16> = values32.iter().map(|&x| f16::from_f32(x)).collect();
    let mut present32 = vec![0.0f32; H * t * D];
    let mut present16 = vec![f16::ZERO; H * t * D];
    let mut acc = vec![0.0f32; D];
    let acc32_ms = best_ms(30, || {
        for h in 0..H {
            let rows = h * t * D..(h + 1) * t * D;
            let dst = Some(&mut present32[rows.clone()]);
            let w = &weights[h * t..][..t];
            simd::accumulate_rows_f32(&mut [&mut acc], &[w], &values32[rows], dst, true);
        }
    });
    let acc16_ms = best_ms(30, || {
        for h in 0..H {
            let rows = h * t * D..(h + 1) * t * D;
            let dst = Some(&mut present16[rows.clone()]);
            let w = &weights[h * t..][..t];
            simd::accumulate_rows_f16(&mut [&mut acc], &[w], &values16[rows], dst, true);
        }
    });
    // A shared buffer's decode reads the rows without copying them.
    let acc16_read_ms = best_ms(30, || {
        for h in 0..H {
            let w = &weights[h * t..][..t];
            simd::accumulate_rows_f16(
                &mut [&mut acc],
                &[w],
                &values16[h * t * D..][..t * D],
                None,
                false,
            );
        }
    });
    let mut values8 = vec![0i8; H * t * (D + 4)];
    for (src, dst) in values32
        .chunks_exact(D)
        .zip(values8.chunks_exact_mut(D + 4))
    {
        i8::store_row(src, dst);
    }
    let acc8_read_ms = best_ms(30, || {
        for h in 0..H {
            let w = &weights[h * t..][..t];
            let rows = &values8[h * t * (D + 4)..][..t * (D + 4)];
            simd::accumulate_rows_int8(&mut [&mut acc], &[w], rows, None);
        }
    });
    let dec32 = call::<f32>(t, 1, m, &books, &raw);
    let dec16 = call::<f16>(t, 1, m, &books, &raw);
    println!("decode step (S = 1), ms over all heads:");
    println!("  tables {lut_ms:.3}  scores {adc_ms:.3}  exp {exp_ms:.3}");
    println!("  values+copy f32 {acc32_ms:.3}  f16 {acc16_ms:.3}");
    println!("  values, no copy: f16 {acc16_read_ms:.3}  int8 rows {acc8_read_ms:.3}");
    println!("  whole call f32 {dec32:.3}  f16 {dec16:.3}");

    let s = t.min(1024);
    let keys = floats(s * H * D, 12);
    let mut new_codes = vec![0u8; s * m];
    let encode_ms = best_ms(3, || {
        for h in 0..H {
            let key = |i: usize| &keys[i * H * D + h * D..][..D];
            books.head(h).encode_keys(s, key, &mut new_codes);
        }
    });
    let mut tables = vec![0.0f32; 16 * m * K];
    let tables_ms = best_ms(3, || {
        for h in 0..H {
            for first in (0..s).step_by(16) {
                let n = 16.min(s - first);
                let query = |i: usize| &keys[(first + i) * H * D + h * D..][..D];
                books
                    .head(h)
                    .build_luts(n, query, 0.125, &mut tables[..n * m * K]);
            }
        }
    });
    let pre32 = call::<f32>(s, s, m, &books, &raw);
    println!("prefill (S = T = {s}), ms over all heads:");
    println!("  encode {encode_ms:.3}  tables {tables_ms:.3}  whole call f32 {pre32:.3}");
}
