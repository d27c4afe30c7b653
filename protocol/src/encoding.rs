//! Ceph encoding conventions: little-endian integers, strings, containers, versioned blocks.
