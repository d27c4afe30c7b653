//! cargo-fuzz target: see `protocol_fuzz::v2::v2_connect`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol_fuzz::v2::v2_connect(data);
});
