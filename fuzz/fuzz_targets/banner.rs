//! cargo-fuzz target: see `protocol_fuzz::banner`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::banner(data);
});
