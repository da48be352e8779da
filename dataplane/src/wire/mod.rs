//! Sans-IO wire formats: checked views over frames, and the ClientHello parser.

pub mod dns;
pub mod frame;
pub mod quic;
pub mod svcb;
/// The ClientHello parser (crate `sluice-hello`, shared with the interception engine).
pub use sluice_hello as tls;
