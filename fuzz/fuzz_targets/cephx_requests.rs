//! cargo-fuzz target: see `protocol_fuzz::cephx::cephx_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::cephx::cephx_requests(data);
});
