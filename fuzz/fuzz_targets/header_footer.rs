//! cargo-fuzz target: see `protocol_fuzz::header_footer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::header_footer(data);
});
