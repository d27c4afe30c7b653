//! Typed messages that encode to and decode from a [`crate::Message`].
