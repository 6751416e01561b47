//! One entry point for fuzzers and their corpus replay: arbitrary bytes become shapes, an
//! attribute, codes and float data (NaN and infinities included) for validation and the kernels.
//! Any input must end in `Ok` or `Err`, never in a panic or an out-of-bounds access.

use super::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, Geometry, ParallelFor,
    ShapeInputs, ValueElem,
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
    // Int8 value rows (D values and a 4-byte scale) now and then.
    let int8 = b.byte() % 3 == 0;
    let value_row_extra = if int8 { 4 } else { 0 };
    pv[3] += value_row_extra as i64;
    let shapes = ShapeInputs {
        query: &q,
        key: &k,
        value: &v,
        past_key_codes: &pc,
        past_value: &pv,
        attention_mask: with_mask.then_some(mask.as_slice()),
        codebooks: &cb,
        past_sequence_length,
        value_row_extra,
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
    let output = vec![0f32; g.batch * g.new_tokens * g.hidden() + skew];
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
    let present_key_window =
        vec![0f32; g.batch * g.kv_heads * rows(t) * g.head_dim + skew * (b.byte() % 2) as usize];
    let inputs = Inputs {
        query: &query,
        key: &key,
        value: &value,
        past_key_codes: &past_key_codes,
        past_value: &past_value,
        attention_mask: with_mask.then_some(attention_mask.as_slice()),
        codebooks: &codebooks,
        past_key_window: &past_key_window,
        transforms: transforms.as_ref(),
        in_place: shared == 2,
    };
    let window_len = present_key_window.len();
    if int8 {
        run::<i8>(&g, &opts, &inputs, output, window_len, &workers)
    } else {
        run::<f32>(&g, &opts, &inputs, output, window_len, &workers)
    }
}

/// The float data of one fuzz case, before the value cache type is chosen.
struct Inputs<'a> {
    query: &'a [f32],
    key: &'a [f32],
    value: &'a [f32],
    past_key_codes: &'a [u8],
    past_value: &'a [f32],
    attention_mask: Option<&'a [i64]>,
    codebooks: &'a [f32],
    past_key_window: &'a [f32],
    transforms: Option<&'a super::KeyTransforms>,
    in_place: bool,
}

fn run<V: ValueElem>(
    g: &Geometry,
    opts: &AttentionOptions,
    inp: &Inputs<'_>,
    mut output: Vec<f32>,
    window_len: usize,
    workers: &SerialReporting,
) -> bool {
    let convert = |x: &[f32]| x.iter().map(|&v| V::from_f32(v)).collect::<Vec<V>>();
    let past_value = convert(inp.past_value);
    let past_key_window: Vec<V::Window> = inp
        .past_key_window
        .iter()
        .map(|&v| V::Window::from_f32(v))
        .collect();
    let mut present_key_window = vec![V::Window::from_f32(0.0); window_len];
    let cache_rows = g.batch * g.kv_heads * g.present_rows();
    let (mut codes, mut values) = if inp.in_place {
        (inp.past_key_codes.to_vec(), past_value.clone())
    } else {
        (
            vec![0u8; cache_rows * g.subspaces],
            vec![V::from_f32(0.0); cache_rows * (g.head_dim + V::ROW_EXTRA)],
        )
    };
    lookat_attention(
        g,
        opts,
        &AttentionInputs {
            query: inp.query,
            key: inp.key,
            value: inp.value,
            past_key_codes: if inp.in_place {
                &[]
            } else {
                inp.past_key_codes
            },
            past_value: if inp.in_place { &[] } else { &past_value },
            past_in_present: inp.in_place,
            attention_mask: inp.attention_mask,
            codebooks: inp.codebooks,
            prepared: None,
            past_key_window: &past_key_window,
            transforms: inp.transforms,
        },
        AttentionOutputs {
            output: &mut output,
            present_key_codes: &mut codes,
            present_value: &mut values,
            present_key_window: &mut present_key_window,
        },
        workers,
    )
    .is_ok()
}
