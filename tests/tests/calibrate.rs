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
    rewritten_with(dir, false)
}

fn rewritten_with(dir: &Path, transforms: bool) -> PathBuf {
    let opts = lookat_rewrite::Options {
        transforms,
        ..rewrite_options()
    };
    let name = if transforms {
        "rewritten-t.onnx"
    } else {
        "rewritten.onnx"
    };
    rewrite_fixture(dir, name, &opts)
}

/// m = 4, K = 64, float32 values, no window, no transforms.
fn rewrite_options() -> lookat_rewrite::Options {
    lookat_rewrite::Options {
        subspaces: 4,
        centroids: 64,
        value_dtype: lookat_rewrite::ValueDtype::F32,
        sinks: 0,
        window: 0,
        transforms: false,
        shared_cache: false,
    }
}

/// The fixture rewritten with `opts`, saved as `dir/name`.
fn rewrite_fixture(dir: &Path, name: &str, opts: &lookat_rewrite::Options) -> PathBuf {
    let original = require(root().join(FIXTURE), "fixture");
    let mut model = lookat_onnx::io::load(&original).unwrap();
    lookat_rewrite::rewrite(&mut model, opts).unwrap();
    let out = dir.join(name);
    lookat_onnx::io::save(&model, original.parent().unwrap(), &out).unwrap();
    out
}

/// The error of a calibration that must fail before any work: its calibration text does not
/// exist, so an error that names it came too late.
fn error_before_work(dir: &Path, mut o: CalibrateOptions) -> String {
    o.texts = vec![dir.join("no-such-text.txt")];
    let err = format!("{:#}", calibrate(&o).unwrap_err());
    assert!(!err.contains("no-such-text"), "{err}");
    err
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
        token_ids: None,
        tokenizer: None,
        tokens: 3000,
        window: 128,
        batch: 2,
        seed: 7,
        iters: 6,
        reservoir: 1500,
        threads,
        quiet: true,
        ort_lib: Some(ort_library()),
        transform: lookat_calibrate::TransformKind::Fsa,
        grid: None,
        budget: None,
        budget_length: None,
        keys_cache: None,
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

/// An output that cannot be written fails before anything is read or run: the missing
/// calibration text is never reached.
#[test]
fn unwritable_output_fails_before_any_work() {
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rw = rewritten(&dir);
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let err = error_before_work(&dir, options(&rw, blocker.join("cal.onnx"), 1));
    assert!(
        err.contains("cal.onnx"),
        "expected an error about the output first, got: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A wrong --original (another model than the one rewritten) is refused before the forward
/// passes, naming what does not fit, instead of failing inside onnxruntime: here a model whose
/// tensor names match (the same exporter) but whose vocabulary cannot take the text's tokens.
#[test]
fn mismatched_original_is_named_before_any_work() {
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-orig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rw = rewritten(&dir);
    let mut o = options(&rw, dir.join("cal.onnx"), 1);
    o.original = require(
        root().join("models/fixtures/tiny/tiny_l3_h4_d16/dyn18-eager-kv.onnx"),
        "fixture",
    );
    let err = format!("{:#}", calibrate(&o).unwrap_err());
    assert!(
        err.contains("has a vocabulary of 512") && err.contains("--tokenizer"),
        "{err}"
    );
    assert!(!dir.join("cal.onnx").exists());
    // A model that lacks the rewritten node's tensors altogether.
    o.original = require(
        root().join("models/fixtures/tiny/tiny_l3_h4_d16/ts17-eager-kv.onnx"),
        "fixture",
    );
    let err = format!("{:#}", calibrate(&o).unwrap_err());
    assert!(
        err.contains("does not compute tensor") && err.contains("--original"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Makes a directory immutable (`chattr +i`: even root cannot create files in it) for the life
/// of the guard.
struct Immutable(PathBuf);

impl Immutable {
    fn new(dir: &Path) -> Immutable {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .expect("chattr (e2fsprogs) is needed to make a read-only directory for this test");
        assert!(status.success(), "chattr +i {} failed", dir.display());
        assert!(
            std::fs::write(dir.join("probe"), b"x").is_err(),
            "{} is still writable",
            dir.display()
        );
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// Calibration writes nothing next to the original model: it works when the original's directory
/// is read-only (the pruned probe model is opened from memory).
#[test]
fn original_in_a_read_only_directory() {
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-ro-{}", std::process::id()));
    let ro = dir.join("original");
    std::fs::create_dir_all(&ro).unwrap();
    let fixture = require(root().join(FIXTURE), "fixture");
    let original = ro.join("model.onnx");
    std::fs::copy(&fixture, &original).unwrap();
    std::fs::copy(
        fixture.with_file_name("weights.bin"),
        ro.join("weights.bin"),
    )
    .unwrap();
    let rw = rewritten(&dir);
    let before: Vec<_> = std::fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    {
        let _guard = Immutable::new(&ro);
        let mut o = options(&rw, dir.join("cal.onnx"), 2);
        o.original = original.clone();
        o.tokens = 600;
        calibrate(&o).expect("calibrate with a read-only original directory");
    }
    let after: Vec<_> = std::fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
    assert!(dir.join("cal.onnx").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The vocabulary and position limits are read from each exporter's graph, and a window past the
/// position table is refused before any forward pass.
#[test]
fn model_limits_are_read_from_the_graph() {
    use lookat_calibrate::collect::ModelLimits;
    for (file, vocab, positions) in [
        ("trained/dyn18-eager-kv.onnx", 50257, 1024),
        ("trained/ts17-eager-kv.onnx", 50257, 1024),
        ("trained/optimum18-sdpa-kv.onnx", 50257, 1024),
        ("tiny/tiny_l3_h4_d16/dyn23-sdpa-kv.onnx", 512, 128),
    ] {
        let path = require(root().join("models/fixtures").join(file), "fixture");
        let model = lookat_onnx::io::load(&path).unwrap();
        assert_eq!(
            ModelLimits::read(&model),
            ModelLimits {
                vocab: Some(vocab),
                positions: Some(positions)
            },
            "{file}"
        );
    }
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-pos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rw = rewritten(&dir);
    let mut o = options(&rw, dir.join("cal.onnx"), 1);
    o.window = 2048;
    o.tokens = 4096;
    let err = format!("{:#}", calibrate(&o).unwrap_err());
    assert!(
        err.contains("--window 2048 exceeds the 1024 positions"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--keys-cache`: the first run stores the collected keys and a second run reuses them; both
/// give the codebooks of an uncached run, byte for byte.
#[test]
fn keys_cache_reuses_collection_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rw = rewritten(&dir);
    let cache = dir.join("keys");
    calibrate(&options(&rw, dir.join("plain.onnx"), 2)).unwrap();
    for run in ["first", "second"] {
        let mut o = options(&rw, dir.join(format!("{run}.onnx")), 2);
        o.keys_cache = Some(cache.clone());
        calibrate(&o).unwrap();
        assert_eq!(
            codebook_bytes(&dir.join(format!("{run}.onnx"))),
            codebook_bytes(&dir.join("plain.onnx")),
            "{run} cached run"
        );
    }
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1, "one cache entry for one collection");
    // A different token budget is a different collection.
    let mut o = options(&rw, dir.join("other.onnx"), 2);
    o.keys_cache = Some(cache.clone());
    o.tokens = 2000;
    calibrate(&o).unwrap();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The last dimension of each LookatAttention node's key-codes cache input and output, as the
/// graph declares them, and the m of its codebooks initializer.
fn declared_subspaces(path: &Path) -> Vec<(i64, Vec<i64>)> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
    let model = lookat_onnx::io::load(path).unwrap();
    let g = model.graph.as_ref().unwrap();
    g.node
        .iter()
        .filter(|n| n.domain == lookat_contract::DOMAIN)
        .map(|n| {
            let books = &n.input[lookat_contract::input::CODEBOOKS];
            let m = g
                .initializer
                .iter()
                .find(|t| &t.name == books)
                .unwrap()
                .dims[1];
            let io = [
                &n.input[lookat_contract::input::PAST_KEY_CODES],
                &n.output[lookat_contract::output::PRESENT_KEY_CODES],
            ];
            let dims = g
                .input
                .iter()
                .chain(&g.output)
                .filter(|v| io.contains(&&v.name))
                .map(|v| {
                    let t = lookat_onnx::build::tensor_type(v).unwrap();
                    match t.shape.dim.last().unwrap().value {
                        Some(Value::DimValue(d)) => d,
                        ref other => panic!("'{}': last dim {other:?}", v.name),
                    }
                })
                .collect();
            (m, dims)
        })
        .collect()
}

/// --budget: each layer gets its own m (the graph's codebooks and key-codes cache I/O reshaped
/// to it), the mean stays within the budget, the calibrated model decodes in onnxruntime; the
/// rewrite's own m as the budget gives the codebooks of a calibration without one; a budget
/// below the smallest candidate fails before any work.
#[test]
fn budget_chooses_m_per_layer() {
    let dir = std::env::temp_dir().join(format!("lookat-calibrate-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = runtime::init(Some(&ort_library())).unwrap();
    let plugin = plugin_library();
    for transforms in [false, true] {
        let rw = rewritten_with(&dir, transforms);
        let out = dir.join("budget.onnx");
        let mut o = options(&rw, out.clone(), 2);
        o.budget = Some(2.5);
        let summary = calibrate(&o).unwrap();
        let sens = summary.sensitivities.as_ref().unwrap();
        assert_eq!(sens.len(), 2);
        for s in sens {
            assert_eq!(s.errors.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 4]);
            // More subspaces, smaller score error.
            assert!(s.errors[2].1 < s.errors[0].1, "{s:?}");
        }
        let declared = declared_subspaces(&out);
        let ms: Vec<i64> = declared.iter().map(|(m, _)| *m).collect();
        assert!(ms.iter().sum::<i64>() as f64 / 2.0 <= 2.5, "{ms:?}");
        for (m, io) in &declared {
            assert_eq!(
                io,
                &vec![*m, *m],
                "codes cache I/O must follow the codebooks' m"
            );
        }
        let summary_ms: Vec<i64> = summary
            .layers
            .iter()
            .map(|l| l.shape.subspaces as i64)
            .collect();
        assert_eq!(summary_ms, ms);
        let model = lookat_onnx::io::load(&out).unwrap();
        let meta: std::collections::HashMap<_, _> = model
            .metadata_props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        let want = if ms[0] == ms[1] {
            ms[0].to_string()
        } else {
            format!("{},{}", ms[0], ms[1])
        };
        assert_eq!(meta[metadata::SUBSPACES], want);
        let mut dec = Decoder::new(runtime::session(env, &out, Some(&plugin), 1).unwrap()).unwrap();
        let logits = dec.step(&[464, 11361, 28846]).unwrap();
        assert!(logits.iter().flatten().all(|x| x.is_finite()));
        assert!(dec.step(&[13]).unwrap()[0].iter().all(|x| x.is_finite()));
    }

    // The whole budget: every layer at the rewrite's m, codebooks as without --budget.
    let rw = rewritten(&dir);
    let (plain, full) = (dir.join("plain.onnx"), dir.join("full.onnx"));
    calibrate(&options(&rw, plain.clone(), 2)).unwrap();
    let mut o = options(&rw, full.clone(), 2);
    o.budget = Some(4.0);
    calibrate(&o).unwrap();
    assert_eq!(codebook_bytes(&full), codebook_bytes(&plain));

    // Too small a budget: named, before the calibration text is read.
    let mut o = options(&rw, dir.join("never.onnx"), 1);
    o.budget = Some(0.5);
    let err = error_before_work(&dir, o);
    assert!(
        err.contains("--budget 0.5") && err.contains("1 B/key/head"),
        "{err}"
    );

    // --budget-length: the key window's bytes come out of the budget. 4 sinks + 60 recent
    // float16 keys of 64 dimensions are 8 B per token and kv head at 1024 tokens.
    let windowed = lookat_rewrite::Options {
        value_dtype: lookat_rewrite::ValueDtype::F16,
        sinks: 4,
        window: 60,
        ..rewrite_options()
    };
    let rw_window = rewrite_fixture(&dir, "rewritten-window.onnx", &windowed);
    let out = dir.join("budget-window.onnx");
    let mut o = options(&rw_window, out.clone(), 2);
    (o.budget, o.budget_length) = (Some(10.5), Some(1024));
    let summary = calibrate(&o).unwrap();
    assert_eq!(summary.codes_budget, Some(2.5));
    let ms: Vec<i64> = declared_subspaces(&out).iter().map(|(m, _)| *m).collect();
    assert!(ms.iter().sum::<i64>() as f64 / 2.0 <= 2.5, "{ms:?}");
    // Without --budget-length the same budget is all codes: every layer keeps m = 4.
    o.budget_length = None;
    let summary = calibrate(&o).unwrap();
    assert_eq!(summary.codes_budget, Some(10.5));
    assert!(summary.layers.iter().all(|l| l.shape.subspaces == 4));
    // A window that leaves too little for codes is named, before any work.
    (o.budget, o.budget_length, o.output) = (Some(8.5), Some(1024), dir.join("never.onnx"));
    let err = error_before_work(&dir, o);
    assert!(
        err.contains("--budget 8.5 leaves 0.50")
            && err.contains("key window's 8.00 B/token/kv head at --budget-length 1024"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The Rust host's IOBinding path (`Decoder::with_max_length` on a `--shared-cache` model: one
/// buffer per cache tensor bound as past and present, key windows rebound) decodes token by
/// token exactly as the copying model calibrated the same way; lookat-calibrate accepts the
/// shared model and gives it the same codebooks.
#[test]
fn shared_cache_model_decodes_like_the_copying_one() {
    let dir = std::env::temp_dir().join(format!("lookat-shared-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = lookat_rewrite::Options {
        value_dtype: lookat_rewrite::ValueDtype::F16,
        sinks: 2,
        window: 8,
        ..rewrite_options()
    };
    let shared_opts = lookat_rewrite::Options {
        shared_cache: true,
        ..base
    };
    let mut calibrated = vec![];
    for (name, opts) in [("copy", &base), ("shared", &shared_opts)] {
        let rw = rewrite_fixture(&dir, &format!("{name}-rw.onnx"), opts);
        let out = dir.join(format!("{name}.onnx"));
        calibrate(&options(&rw, out.clone(), 2)).unwrap();
        calibrated.push(out);
    }
    assert_eq!(
        codebook_bytes(&calibrated[0]),
        codebook_bytes(&calibrated[1])
    );

    let env = runtime::init(Some(&ort_library())).unwrap();
    let plugin = plugin_library();
    let session = |path: &Path| runtime::session(env, path, Some(&plugin), 2).unwrap();
    let mut copying = Decoder::new(session(&calibrated[0])).unwrap();
    let err = Decoder::new(session(&calibrated[1]))
        .err()
        .expect("needs a length");
    assert!(err.to_string().contains("maximum length"), "{err}");
    let mut shared = Decoder::with_max_length(session(&calibrated[1]), Some(24)).unwrap();
    let steps: Vec<Vec<u32>> = [vec![464, 11361, 28846]]
        .into_iter()
        .chain((0..14).map(|i| vec![13 + 7 * i]))
        .collect();
    for round in 0..2 {
        for (i, ids) in steps.iter().enumerate() {
            let (a, b) = (copying.step(ids).unwrap(), shared.step(ids).unwrap());
            assert_eq!(a, b, "round {round}, call {i}: logits differ");
        }
        // After a reset the buffers start empty again.
        copying.reset().unwrap();
        shared.reset().unwrap();
    }
    let too_long = shared.step(&[1; 25]).unwrap_err().to_string();
    assert!(too_long.contains("exceed"), "{too_long}");
    std::fs::remove_dir_all(&dir).unwrap();
}
