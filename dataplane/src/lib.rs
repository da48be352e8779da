//! # sluice-dataplane
//!
//! The inline packet path of Sluice: two AF_PACKET ports (`inside`, `outside`) bridged by a
//! sans-IO [`engine::Engine`] that tracks flows, holds the first client segments of TLS flows
//! until the ClientHello is complete, decides with the compiled [`sluice_rules::Policy`], and
//! forwards everything it has no reason to touch unchanged.
//!
//! IO lives in [`ring`] (TPACKET_V2 receive ring, batched sends), [`port`] (plain raw
//! sockets), [`fastpath`] (the kernel fast path's BPF programs and map), [`bypass`] (the
//! fail-open bypass left in the kernel), [`tun`], [`link`] (the Unix
//! socket to sluice-control and the record spool on disk) and the binary's driver; the
//! parsers, the engine, NAT and policy are pure. The interception engine is its own crate,
//! `sluice-intercept`; the binary joins the two (ARCHITECTURE.md, "Processes and crates").

pub mod bypass;
pub mod defrag;
pub mod engine;
pub mod fastpath;
pub mod flow;
pub mod guard;
mod ident_fmt;
pub mod link;
pub mod nat;
pub mod port;
pub mod reassembly;
pub mod record;
pub mod ring;
mod sock;
pub use sock::Drops;
pub mod tun;
pub mod wire;
