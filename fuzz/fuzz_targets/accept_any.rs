//! cargo-fuzz target: see `protocol_fuzz::v2::accept_any`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = protocol_fuzz::v2::accept_any(data);
});
