//! The sans-IO msgr2.1 session state machine (placeholder; filled in below).

pub mod banner;
pub mod frames;
pub mod framing;
pub mod tag;
