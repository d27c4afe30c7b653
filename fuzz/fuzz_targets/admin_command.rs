//! cargo-fuzz target: see `protocol_fuzz::admin::admin_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol_fuzz::admin::admin_command(data);
});
