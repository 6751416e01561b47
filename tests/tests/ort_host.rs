//! LookatAttention through ONNX Runtime from a Rust host (ort, load-dynamic): prefill then decode,
//! float32 and float16 value caches. Each call through ORT must equal, bit for bit, the pure kernel
//! run serially on the same inputs (the kernels are checked against an f64 reference in op/tests),
//! so this checks the plugin glue: tensor layout, shapes, dtypes, the thread pool, cache hand-off.

use half::f16;
use lookat_op::kernels::{lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs};
use lookat_op::{Geometry, Serial, ValueElem};
use lookat_tests::{one_node_model, plugin_library, repo_root, session, OneNode};
use onnx_protobuf::tensor_proto::DataType;
use ort::value::Tensor;

const H: usize = 4;
const D: usize = 64;
const M: usize = 8;
const K: usize = 256;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn decode_loop<
    V: ValueElem + ort::value::PrimitiveTensorElementType + std::fmt::Debug + PartialEq,
>(
    value_type: DataType,
) {
    let mut rng = Lcg(42);
    let codebooks = rng.vec(H * M * K * (D / M));
    let model = one_node_model(&OneNode {
        heads: H,
        head_dim: D,
        subspaces: M,
        centroids: K,
        value_type,
        codebooks: codebooks.clone(),
    });
    let mut sess = session(&model, 2);
    let b = 2;
    let mut past_codes: Vec<u8> = vec![];
    let mut past_values: Vec<V> = vec![];
    let mut p = 0usize;
    for s in [7usize, 1, 1, 1] {
        let e = H * D;
        let (q, k, v) = (rng.vec(b * s * e), rng.vec(b * s * e), rng.vec(b * s * e));
        // Row 1 left-padded by 3 tokens.
        let mask: Vec<i64> = (0..b)
            .flat_map(|bi| (0..p + s).map(move |t| i64::from(bi == 0 || t >= 3)))
            .collect();
        let outputs = sess
            .run(ort::inputs![
                "query" => Tensor::from_array(([b, s, e], q.clone())).unwrap(),
                "key" => Tensor::from_array(([b, s, e], k.clone())).unwrap(),
                "value" => Tensor::from_array(([b, s, e], v.clone())).unwrap(),
                "past_key_codes" => Tensor::from_array(([b, H, p, M], past_codes.clone())).unwrap(),
                "past_value" => Tensor::from_array(([b, H, p, D], past_values.clone())).unwrap(),
                "attention_mask" => Tensor::from_array(([b, p + s], mask.clone())).unwrap(),
            ])
            .expect("run LookatAttention in ONNX Runtime");
        let (out_shape, out) = outputs["output"].try_extract_tensor::<f32>().unwrap();
        let (codes_shape, codes) = outputs["present_key_codes"]
            .try_extract_tensor::<u8>()
            .unwrap();
        let (values_shape, values) = outputs["present_value"].try_extract_tensor::<V>().unwrap();
        assert_eq!(&**out_shape, &[b as i64, s as i64, e as i64]);
        assert_eq!(
            &**codes_shape,
            &[b as i64, H as i64, (p + s) as i64, M as i64]
        );
        assert_eq!(
            &**values_shape,
            &[b as i64, H as i64, (p + s) as i64, D as i64]
        );

        // The same call on the pure kernel.
        let g = Geometry::multi_head(b, H, D, s, p, M, K);
        let mut want_out = vec![0f32; b * s * e];
        let mut want_codes = vec![0u8; b * H * (p + s) * M];
        let mut want_values = vec![V::from_f32(0.0); b * H * (p + s) * D];
        lookat_attention(
            &g,
            &AttentionOptions::default(),
            &AttentionInputs {
                query: &q,
                key: &k,
                value: &v,
                past_key_codes: &past_codes,
                past_value: &past_values,
                past_in_present: false,
                attention_mask: Some(&mask),
                codebooks: &codebooks,
                prepared: None,
                past_key_window: &[],
                transforms: None,
            },
            AttentionOutputs {
                output: &mut want_out,
                present_key_codes: &mut want_codes,
                present_value: &mut want_values,
                present_key_window: &mut [],
            },
            &Serial,
        )
        .unwrap();
        assert_eq!(out, &want_out[..], "output, step with P={p} S={s}");
        assert_eq!(codes, &want_codes[..], "present codes, P={p} S={s}");
        assert_eq!(values, &want_values[..], "present values, P={p} S={s}");
        assert!(out.iter().all(|x| x.is_finite()));

        past_codes = codes.to_vec();
        past_values = values.to_vec();
        p += s;
    }
}

#[test]
fn prefill_and_decode_float32_values() {
    decode_loop::<f32>(DataType::FLOAT);
}

#[test]
fn prefill_and_decode_float16_values() {
    decode_loop::<f16>(DataType::FLOAT16);
}

/// The plugin these tests load is never older than the sources it is built from (the helper
/// rebuilds it; the ARM64 job builds its own just before).
#[test]
fn the_plugin_is_built_from_the_current_sources() {
    let built = std::fs::metadata(plugin_library())
        .and_then(|m| m.modified())
        .expect("plugin modification time");
    let mut stack = vec![
        repo_root().join("op/src"),
        repo_root().join("contract/src"),
        repo_root().join("op/Cargo.toml"),
    ];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let changed = std::fs::metadata(&path).unwrap().modified().unwrap();
            assert!(
                changed <= built,
                "{} changed after the plugin was built",
                path.display()
            );
        }
    }
}
