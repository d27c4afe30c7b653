//! cargo-fuzz target: see `protocol_fuzz::cephx::cephx_v2_done`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::cephx::cephx_v2_done(data);
});
