//! Code shared by this crate's integration tests (a module of each test that declares
//! `mod common;`, not a test of its own: Cargo builds only `tests/*.rs` as tests).

// Each test binary compiles the whole module and uses a part of it (open_mutation never
// builds an auth-none msgr2 pair nor checks the bytes in flight): what one binary leaves
// unused, another uses.
// Its pairs' virtual clocks start at the real one and a watchdog thread guards each run:
// test harness, not the sans-IO code the clippy.toml ban is for.
#[allow(dead_code, clippy::disallowed_methods)]
pub mod mutation;

#[allow(dead_code)]
pub mod v2_wire;
