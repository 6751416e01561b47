//! Replays the fuzzer corpus (fuzz/corpus/rewrite_model) and 400 seeded mutations of a committed
//! fixture (bits flipped, truncated) through parse + rewrite: errors are fine, panics are not.

use lookat_rewrite::fuzz_rewrite;

#[test]
fn corpus_and_mutated_fixtures_never_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("fuzz/corpus/rewrite_model");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()))
    {
        fuzz_rewrite(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
    let fixture = root.join("models/fixtures/tiny/tiny_l3_h4_d16/ts17-eager-kv.onnx");
    let original = std::fs::read(&fixture)
        .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", fixture.display()));
    let mut seeded = vec![4u8];
    seeded.extend_from_slice(&original);
    assert!(fuzz_rewrite(&seeded), "the unmodified fixture must rewrite");
    let mut state = 0xf00d_u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    for _ in 0..400 {
        let mut bytes = seeded.clone();
        for _ in 0..1 + next() % 8 {
            let i = 1 + next() % (bytes.len() - 1);
            bytes[i] ^= 1 << (next() % 8);
        }
        if next() % 4 == 0 {
            let keep = 1 + next() % (bytes.len() - 1);
            bytes.truncate(keep);
        }
        fuzz_rewrite(&bytes);
    }
}
