//! The protocol error type and its categories.
