//! cargo-fuzz target: see `protocol_fuzz::v1::v1_connect`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol_fuzz::v1::v1_connect(data);
});
