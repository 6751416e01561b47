#![no_main]
// Arbitrary bytes (and mutations of the fixtures, given as seeds) through parsing and rewriting.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lookat_rewrite::fuzz_rewrite(data);
});
