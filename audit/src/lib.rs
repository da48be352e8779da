//! Evidence an auditor can check (ARCHITECTURE.md, "Evidence"): every record of a chain
//! carries the hash of the one before it, heads of chains are signed as checkpoints, and
//! [`verify`] walks a chain as stored and names each break with its position. Pure: bytes in,
//! findings out; the store, the clock and the key file belong to the daemon.
//!
//! - [`chain`]: the link of a record, SHA-256 over a canonical encoding;
//! - [`checkpoint`]: a chain's head at a sequence number, signed with Ed25519;
//! - [`verify`]: the walk over stored rows and checkpoints.

pub mod chain;
pub mod checkpoint;
pub mod verify;

pub use chain::{GENESIS, Link, link};
pub use checkpoint::{Checkpoint, CheckpointError, Signer, verify_manifest};
pub use verify::{Finding, Kind, Report, Row, Verifier};

/// The public key type checkpoints verify under.
pub use ed25519_dalek::VerifyingKey;
