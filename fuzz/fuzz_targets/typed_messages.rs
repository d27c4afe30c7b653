//! cargo-fuzz target: see `protocol_fuzz::typed_messages::typed_messages`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::typed_messages::typed_messages(data);
});
