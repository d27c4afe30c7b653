//! cargo-fuzz target: see `protocol_fuzz::cephx::cephx_replies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::cephx::cephx_replies(data);
});
