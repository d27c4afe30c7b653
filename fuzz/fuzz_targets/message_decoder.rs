//! cargo-fuzz target: see `protocol_fuzz::message_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::message_decoder(data);
});
