//! One entry point for fuzzers and their corpus replay: arbitrary bytes become shapes, an
//! attribute, codes and float data (NaN and infinities included) for validation and the kernels.
//! Any input must end in `Ok` or `Err`, never in a panic or an out-of-bounds access.

use super::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, Geometry, ParallelFor,
    ShapeInputs,
};

/// Runs tasks in order on the calling thread but reports `workers` threads, so that long caches
/// on few heads take the split (flash-decoding) path.
struct SerialReporting(usize);

impl ParallelFor for SerialReporting {
    fn run(&self, tasks: usize, work: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(work);
    }
    fn parallelism(&self) -> usize {
        self.0
    }
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn small(&mut self, max: u8) -> i64 {
        (self.byte() % (max + 1)) as i64
    }
    fn float(&mut self) -> f32 {
        f32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// Returns whether the call was accepted (for statistics); never panics by contract.
pub fn fuzz_attention(data: &[u8]) -> bool {
    let mut b = Bytes(data);
    let kv_heads = b.small(4).max(1);
    let head_dim = [1, 2, 4, 8, 12, 16][b.small(5) as usize];
    let (batch, new, past) = (b.small(3), b.small(4), b.small(8));
    // The longest choice crosses several token blocks and, on few heads, the split threshold.
    let past = if past == 8 { 2100 } else { past };
    let subspaces = [1, 2, 3, 4, 8, 16][b.small(5) as usize];
    let centroids = [1, 2, 16, 255, 256, 257][b.small(5) as usize];
    // Grouped-query attention (1 = multi-head) and the input layout.
    let group = [1, 1, 2, 3][b.small(3) as usize];
    let heads = kv_heads * group;
    let head_major = b.byte() % 2 == 1;
    // Most shapes are consistent; a selector byte breaks one of them.
    let (mut q, mut k) = if head_major {
        (
            vec![batch, heads, new, head_dim],
            vec![batch, kv_heads, new, head_dim],
        )
    } else {
        (
            vec![batch, new, heads * head_dim],
            vec![batch, new, kv_heads * head_dim],
        )
    };
    let v = k.clone();
    let mut pc = vec![batch, kv_heads, past, subspaces];
    let mut pv = vec![batch, kv_heads, past, head_dim];
    let mut mask = vec![batch, past + new];
    let sub = if subspaces > 0 {
        head_dim / subspaces
    } else {
        0
    };
    let mut cb = vec![kv_heads, subspaces, centroids, sub];
    match b.byte() % 13 {
        0 => q[2] += 1,
        1 => k[1] += 1,
        2 => pc[2] += 1,
        3 => pv[0] += 1,
        4 => mask[1] -= 1,
        5 => cb[0] += 1,
        6 => cb.pop().map_or((), |_| ()),
        7 => q.push(1),
        8 => pc[3] = -1,
        9 => mask[1] = i64::MAX,
        10 => q[1] += 1,
        _ => {}
    }
    // A head count the kv heads do not divide, now and then.
    let num_kv_heads = if b.byte() % 11 == 0 {
        kv_heads + 1
    } else {
        kv_heads
    };
    let with_mask = b.byte() % 2 == 0;
    // Shared max-length buffers now and then (the past rows then being the capacity), appended
    // in place or into a separate present; the valid length may not fit.
    let shared = b.byte() % 3;
    let past_sequence_length = (shared > 0).then(|| b.small(8).min(past + 1));
    if let Some(p) = past_sequence_length {
        mask[1] = p + new - (mask[1] != past + new) as i64;
    }
    let shapes = ShapeInputs {
        query: &q,
        key: &k,
        value: &v,
        past_key_codes: &pc,
        past_value: &pv,
        attention_mask: with_mask.then_some(mask.as_slice()),
        codebooks: &cb,
        past_sequence_length,
    };
    let Ok(g) = Geometry::from_shapes(&shapes, heads, num_kv_heads) else {
        return false;
    };
    let count = |s: &[i64]| s.iter().map(|&d| d.max(0) as usize).product::<usize>();
    if count(&pv) + count(&cb) + count(&q) * 3 > 1 << 16 {
        return false; // keep each run fast
    }
    let mut floats = |n: usize| (0..n).map(|_| b.float()).collect::<Vec<f32>>();
    let (query, key, value) = (floats(count(&q)), floats(count(&k)), floats(count(&v)));
    let past_value = floats(count(&pv));
    let codebooks = floats(count(&cb));
    let past_key_codes: Vec<u8> = (0..count(&pc)).map(|_| b.byte()).collect();
    let mask_len = if with_mask { count(&mask) } else { 0 };
    let attention_mask: Vec<i64> = (0..mask_len).map(|_| b.byte() as i64 % 3).collect();
    let opts = AttentionOptions {
        scale: (b.byte() % 2 == 0).then(|| b.float()),
        exact_current: b.byte() % 2 == 0,
        sinks: [0, 0, 1, 4][b.small(3) as usize],
        window: [0, 0, 1, 3, 64][b.small(4) as usize],
    };
    let rows = |n: usize| {
        if opts.windowed() {
            crate::contract::window::rows(n, opts.sinks, opts.window)
        } else {
            0
        }
    };
    let t = g.total_tokens();
    // A wrong output length now and then, to reach the length checks.
    let skew = (b.byte() % 7 == 0) as usize;
    let workers = SerialReporting(1 + b.byte() as usize % 4);
    let mut output = vec![0f32; g.batch * g.new_tokens * g.hidden() + skew];
    // A random key/query transform pair now and then (any A, B: the kernels must not care).
    let transforms = (b.byte() % 4 == 0).then(|| {
        let n = g.kv_heads * g.head_dim * g.head_dim;
        let a: Vec<f32> = (0..n).map(|_| b.float()).collect();
        let q: Vec<f32> = (0..n).map(|_| b.float()).collect();
        super::KeyTransforms::new(&a, &q, g.kv_heads, g.head_dim).expect("sizes")
    });
    let past_key_window: Vec<f32> = (0..g.batch * g.kv_heads * rows(g.past_tokens) * g.head_dim)
        .map(|_| b.float())
        .collect();
    let mut present_key_window =
        vec![0f32; g.batch * g.kv_heads * rows(t) * g.head_dim + skew * (b.byte() % 2) as usize];
    let cache_rows = g.batch * g.kv_heads * g.present_rows();
    let in_place = shared == 2;
    let (mut codes, mut values) = if in_place {
        (past_key_codes.clone(), past_value.clone())
    } else {
        (
            vec![0u8; cache_rows * g.subspaces],
            vec![0f32; cache_rows * g.head_dim],
        )
    };
    lookat_attention(
        &g,
        &opts,
        &AttentionInputs {
            query: &query,
            key: &key,
            value: &value,
            past_key_codes: if in_place { &[] } else { &past_key_codes },
            past_value: if in_place { &[] } else { &past_value },
            past_in_present: in_place,
            attention_mask: with_mask.then_some(attention_mask.as_slice()),
            codebooks: &codebooks,
            prepared: None,
            past_key_window: &past_key_window,
            transforms: transforms.as_ref(),
        },
        AttentionOutputs {
            output: &mut output,
            present_key_codes: &mut codes,
            present_value: &mut values,
            present_key_window: &mut present_key_window,
        },
        &workers,
    )
    .is_ok()
}
