//! Replays the fuzzer corpus (fuzz/corpus/op_attention, including every crash turned into a
//! regression input) and 3000 seeded random inputs through the fuzz entry point: no panic.

use lookat_op::kernels::fuzz::fuzz_attention;

#[test]
fn corpus_and_random_inputs_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/op_attention");
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    let mut accepted = 0;
    for path in &entries {
        accepted += usize::from(fuzz_attention(&std::fs::read(path).unwrap()));
    }
    let mut state = 0x5eed_u64;
    for len in 0..3000 {
        let bytes: Vec<u8> = (0..(len % 600))
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        accepted += usize::from(fuzz_attention(&bytes));
    }
    assert!(accepted > 0, "no input reached the kernels");
    println!("{} corpus files, {accepted} accepted calls", entries.len());
}
