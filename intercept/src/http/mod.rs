//! HTTP/1.1 for the interception engine, sans-IO: message heads with strict framing rules
//! (request smuggling refused), the chunked transfer coding, and what a client asks of an
//! explicit proxy (`proxy_head`).

pub mod chunked;
pub mod deadline;
pub mod head;
pub mod proxy_head;
