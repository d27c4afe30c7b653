//! cargo-fuzz target: see `protocol_fuzz::cephx::cephx_authorizers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::cephx::cephx_authorizers(data);
});
