//! lookat-calibrate end to end on the trained fixture (small settings): byte-identical codebooks
//! for 1 and 2 threads, metadata read back, and the calibrated model runs with the plugin.

use std::path::{Path, PathBuf};

use lookat_calibrate::decode::Decoder;
use lookat_calibrate::{calibrate, runtime, CalibrateOptions};
use lookat_contract::{metadata, naming};
use lookat_tests::{ort_library, plugin_library, repo_root as root};
use sha2::{Digest, Sha256};

fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} {} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

const FIXTURE: &str = "models/fixtures/trained/dyn18-eager-kv.onnx";

fn rewritten(dir: &Path) -> PathBuf {
    let original = require(root().join(FIXTURE), "fixture");
    let mut model = lookat_onnx::io::load(&original).unwrap();
    let opts = lookat_rewrite::Options {
        subspaces: 4,
        centroids: 64,
        value_dtype: lookat_rewrite::ValueDtype::F32,
    };
    lookat_rewrite::rewrite(&mut model, &opts).unwrap();
    let out = dir.join("rewritten.onnx");
    lookat_onnx::io::save(&model, original.parent().unwrap(), &out).unwrap();
    out
}

fn options(rewritten: &Path, output: PathBuf, threads: usize) -> CalibrateOptions {
    CalibrateOptions {
        original: root().join(FIXTURE),
        rewritten: rewritten.to_path_buf(),
        output,
        texts: ["prose", "code", "technical"]
            .map(|d| {
                require(
                    root().join(format!("models/text/calib/{d}.txt")),
                    "calibration text",
                )
            })
            .to_vec(),
        tokens: 3000,
        window: 128,
        batch: 2,
        seed: 7,
        iters: 6,
        reservoir: 1500,
        threads,
        quiet: true,
        ort_lib: Some(ort_library()),
    }
}

fn codebook_bytes(path: &Path) -> Vec<Vec<u8>> {
    let model = lookat_onnx::io::load(path).unwrap();
    model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.name.starts_with(naming::CODEBOOKS_PREFIX))
        .map(|t| t.raw_data.clone())
        .collect()
}

#[test]
fn calibration_is_deterministic_records_metadata_and_runs() {
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rw = rewritten(&dir);
    let one = dir.join("one.onnx");
    let two = dir.join("two.onnx");
    let s1 = calibrate(&options(&rw, one.clone(), 1)).unwrap();
    calibrate(&options(&rw, two.clone(), 2)).unwrap();

    let (a, b) = (codebook_bytes(&one), codebook_bytes(&two));
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|book| book.len() == 4 * 4 * 64 * 16 * 4));
    assert_eq!(a, b, "codebooks differ between 1 and 2 threads");
    let floats: Vec<f32> = a[0]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(floats.iter().all(|x| x.is_finite()));

    // Another seed gives other codebooks.
    let other = dir.join("other.onnx");
    let mut o = options(&rw, other.clone(), 2);
    o.seed = 8;
    calibrate(&o).unwrap();
    assert_ne!(codebook_bytes(&other), a);

    // Metadata, checked against values computed here.
    let model = lookat_onnx::io::load(&one).unwrap();
    let meta: std::collections::HashMap<_, _> = model
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    let mut hash = Sha256::new();
    for d in ["prose", "code", "technical"] {
        hash.update(std::fs::read(root().join(format!("models/text/calib/{d}.txt"))).unwrap());
    }
    let sha: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(meta[metadata::SUBSPACES], "4");
    assert_eq!(meta[metadata::CENTROIDS], "64");
    assert_eq!(meta[metadata::SEED], "7");
    assert_eq!(meta[metadata::TOKENS], "2944"); // 3000 tokens in windows of 128
    assert_eq!(meta[metadata::CORPUS_SHA256], sha);
    assert!(meta[metadata::TOOL_VERSION].starts_with("lookat-calibrate "));
    assert_eq!(s1.errors.len(), 8);
    assert!(s1
        .errors
        .iter()
        .all(|e| e.relative > 0.0 && e.relative < 1.0 && e.keys == 1500));

    // The calibrated model runs in ONNX Runtime with the plugin.
    let env = runtime::init(Some(&ort_library())).unwrap();
    let plugin = plugin_library();
    let mut dec = Decoder::new(runtime::session(env, &one, Some(&plugin), 1).unwrap()).unwrap();
    let logits = dec.step(&[464, 11361, 28846]).unwrap();
    assert_eq!(logits.len(), 3);
    assert!(logits.iter().flatten().all(|x| x.is_finite()));
    let next = dec.step(&[13]).unwrap();
    assert_eq!(next.len(), 1);

    // The rewritten input and the calibrated output are distinct files: the input is untouched.
    assert!(codebook_bytes(&rw).iter().all(|b| b
        .chunks_exact(4)
        .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_nan())));
    std::fs::remove_dir_all(&dir).unwrap();
}
