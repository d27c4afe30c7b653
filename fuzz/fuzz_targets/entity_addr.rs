//! cargo-fuzz target: see `protocol_fuzz::entity_addr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::entity_addr(data);
});
