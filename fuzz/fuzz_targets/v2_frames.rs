//! cargo-fuzz target: see `protocol_fuzz::v2::v2_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::v2::v2_frames(data);
});
