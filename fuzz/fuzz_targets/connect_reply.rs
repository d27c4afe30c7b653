//! cargo-fuzz target: see `protocol_fuzz::connect_reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::connect_reply(data);
});
