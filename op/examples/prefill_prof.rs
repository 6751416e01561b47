//! temporary profiling driver
use half::f16;
use lookat_op::kernels::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, Geometry,
    PreparedCodebooks, Serial,
};
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
fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let (t, m, reps) = (a[0], a[1], a[2]);
    let (h, d, k) = (12, 64, 256);
    let sub = d / m;
    let raw = floats(h * m * k * sub, 9);
    let books = PreparedCodebooks::new(&raw, h, m, k, sub);
    let g = Geometry::multi_head(1, h, d, t, 0, m, k);
    let (q, kk, v) = (
        floats(t * h * d, 1),
        floats(t * h * d, 2),
        floats(t * h * d, 3),
    );
    let mask = vec![1i64; t];
    let mut out = vec![0.0f32; t * h * d];
    let mut pc = vec![0u8; h * t * m];
    let mut pv = vec![f16::ZERO; h * t * d];
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        lookat_attention(
            &g,
            &AttentionOptions::default(),
            &AttentionInputs {
                query: &q,
                key: &kk,
                value: &v,
                past_key_codes: &[],
                past_value: &[] as &[f16],
                past_in_present: false,
                attention_mask: Some(&mask),
                codebooks: &raw,
                prepared: Some(&books),
                past_key_window: &[],
                transforms: None,
            },
            AttentionOutputs {
                output: &mut out,
                present_key_codes: &mut pc,
                present_value: &mut pv,
                present_key_window: &mut [],
            },
            &Serial,
        )
        .unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!("T={t} m={m}: best {:.3} ms", best * 1e3);
}
