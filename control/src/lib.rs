//! # sluice-control
//!
//! The control plane of Sluice. Today: the flow store ([`store`]) that the control daemon will
//! fill from the data plane's record stream, and the `sluicectl` CLI (rules and CA, offline).

pub mod store;
