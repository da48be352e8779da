//! HTTP/1.1 for the interception engine, sans-IO: message heads with strict framing rules
//! (request smuggling refused) and the chunked transfer coding.

pub mod chunked;
pub mod deadline;
pub mod head;
