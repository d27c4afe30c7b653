//! The asyncmsgr benchmark harness (placeholder until event_center/messenger land).
fn main() {}
