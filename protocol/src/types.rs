//! Entity types and names, entity addresses (legacy and in-message forms), feature bits.
