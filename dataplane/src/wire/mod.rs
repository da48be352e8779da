//! Sans-IO wire formats: checked views over frames, and the ClientHello parser.

pub mod dns;
pub mod frame;
pub mod quic;
pub mod tls;
