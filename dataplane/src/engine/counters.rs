//! The packet engine's counters, written into every statistics record.

/// Engine counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counters {
    /// Frames handled.
    pub frames: u64,
    /// Bytes of the frames handled.
    pub bytes: u64,
    /// Frames not IP (ARP, …) or unparsable: forwarded untouched.
    pub non_ip: u64,
    /// Flows created.
    pub flows: u64,
    /// Flows refused: the table was full, or (for embryonic flows) their source was at its
    /// limit.
    pub flows_refused: u64,
    /// Embryonic flows refused because their source was at its limit (also in
    /// `flows_refused`).
    pub embryonic_refused: u64,
    /// Embryonic flows evicted to make room.
    pub flows_evicted: u64,
    /// ClientHellos parsed.
    pub hellos: u64,
    /// Flows blocked.
    pub blocked: u64,
    /// Overlapping segments that disagreed.
    pub evasions: u64,
    /// Resets sent.
    pub resets: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Flows handed to the kernel fast path.
    pub offloaded: u64,
    /// Frames the kernel fast path forwarded (not counted in `frames`).
    pub offloaded_frames: u64,
    /// Flows the fast path could not take (its map full): they stay on the engine's path.
    pub offload_refused: u64,
    /// Frames the kernel fast path forwarded, by its own count.
    pub fastpath_redirected: u64,
    /// Frames the fast path's classifier decided without the socket filter's mark (0 while
    /// the data plane runs; anything else means the two programs could disagree).
    pub fastpath_unmarked: u64,
    /// IP fragments of TCP or UDP from the inside (reassembled before classification).
    pub fragments: u64,
    /// Datagrams made whole from fragments.
    pub fragments_reassembled: u64,
    /// Fragments dropped: reassembly limits, timeouts, inconsistent lengths, overlaps (also
    /// counted as evasions) and `ip_fragments = "block"`.
    pub fragments_dropped: u64,
    /// Client segments of undecided or guarded flows dropped for a wrong TCP checksum (the
    /// server would drop them: they must not count for classification).
    pub bad_checksums: u64,
    /// ICMP port-unreachables sent to QUIC clients refused (`quic_refusal = "unreachable"`).
    pub unreachables: u64,
    /// Firefox DoH canary lookups answered NXDOMAIN (`doh_canary = "nxdomain"`).
    pub canary_answers: u64,
    /// DNS answers for categorised names passed on with the `ech` parameter of their HTTPS or
    /// SVCB records hidden (`dns_ech = "strip"`).
    pub ech_hidden: u64,
    /// Frames the kernel dropped before the engine read them, its receive rings (or socket
    /// buffers) being full (`PACKET_STATISTICS` of both ports, read once a second).
    pub ring_drops: u64,
}
