//! cargo-fuzz target: see `protocol_fuzz::v2::v2_sealed` (review r12, exploratory).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol_fuzz::v2::v2_sealed(data);
});
