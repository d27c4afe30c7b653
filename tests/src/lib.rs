//! Workspace integration tests and their fixtures (loopback peers, a real `ceph-mon`).
//!
//! Never: part of any shipped library; only `tests/` and `bench` use it.

pub mod ceph;
pub mod cephx;
pub mod chaos;
pub mod counting;
pub mod hostile;
pub mod hostile_v2;
pub mod loopback;
pub mod mon;
pub mod nat;
pub mod soak;
pub mod synthetic;
pub mod watchdog;
