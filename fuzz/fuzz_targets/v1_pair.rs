//! cargo-fuzz target: see `protocol_fuzz::pair::v1_pair`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol_fuzz::pair::v1_pair(data);
});
