#![no_main]
// Shapes, attributes, codes and data for validation and the kernels; see op/src/kernels/fuzz.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lookat_op::kernels::fuzz::fuzz_attention(data);
});
