//! Flow records: what the data plane tells security about every flow, as JSON lines (request
//! records are the interception engine's, `sluice_intercept::RequestRecord`).
//! Never carries payload bytes or secrets.

use serde::Serialize;

use crate::engine::Now;
use crate::flow::{Class, EndReason, Flow, Name, Verdict};
use crate::ident_fmt::mac;
use crate::wire::frame::Proto;

/// One flow record.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRecord {
    /// Always `flow`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `end` (the flow left the table) or `update` (periodic, flow still running).
    pub event: &'static str,
    /// Why it ended (for `end`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Flow id (per data-plane run).
    pub flow_id: u64,
    /// Unix ms of the record.
    pub ts_ms: u64,
    /// Unix ms of the first packet.
    pub first_seen_ms: u64,
    /// Unix ms of the last packet.
    pub last_seen_ms: u64,
    /// Protocol.
    pub proto: Proto,
    /// Initiator address.
    pub src: String,
    /// Initiator port.
    pub sport: u16,
    /// Initiator MAC.
    pub src_mac: String,
    /// Responder address.
    pub dst: String,
    /// Responder port.
    pub dport: u16,
    /// VLAN id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Initiated from the inside port.
    pub inside: bool,
    /// How the flow came: `proxy` for an explicit proxy's tunnel (absent inline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// Identity name.
    pub identity: Option<Name>,
    /// Feed user.
    pub user: Option<Name>,
    /// Classification (SNI, ALPN, JA4, category, rule, action, reason).
    #[serde(flatten)]
    pub class: Class,
    /// Verdict.
    pub verdict: Verdict,
    /// Packets client → server.
    pub pkts_out: u64,
    /// Payload bytes client → server.
    pub bytes_out: u64,
    /// Packets server → client.
    pub pkts_in: u64,
    /// Payload bytes server → client.
    pub bytes_in: u64,
}

impl FlowRecord {
    fn new(f: &Flow, event: &'static str, end_reason: Option<EndReason>, now: Now) -> Self {
        let mut class = (*f.class).clone();
        if class.reason.is_none() && f.verdict == Verdict::Divert {
            class.reason = Some("diverted to the interception engine");
        }
        FlowRecord {
            kind: "flow",
            event,
            end_reason,
            flow_id: f.id,
            ts_ms: now.unix_ms,
            first_seen_ms: f.first_unix,
            last_seen_ms: f.first_unix + f.last_mono.saturating_sub(f.first_mono),
            proto: f.proto,
            src: f.client.0.to_string(),
            sport: f.client.1,
            src_mac: mac(&f.client_mac),
            dst: f.server.0.to_string(),
            dport: f.server.1,
            vlan: f.vlan,
            inside: f.from_inside,
            via: None,
            identity: f.identity.clone(),
            user: f.user.clone(),
            class,
            verdict: f.verdict,
            pkts_out: f.c2s.0,
            bytes_out: f.c2s.1,
            pkts_in: f.s2c.0,
            bytes_in: f.s2c.1,
        }
    }

    /// The record of a flow that left the table.
    pub fn end(f: &Flow, why: EndReason, now: Now) -> Self {
        FlowRecord::new(f, "end", Some(why), now)
    }

    /// A periodic record of a running flow.
    pub fn update(f: &Flow, now: Now) -> Self {
        FlowRecord::new(f, "update", None, now)
    }
}

/// The summary of one source's (or, past a limit per interval, every other source's) connection
/// attempts that never completed in an interval. A flow record with `event` `embryonic`.
#[derive(Debug, Clone, Serialize)]
pub struct EmbryonicRecord {
    /// Always `flow`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `embryonic`.
    pub event: &'static str,
    /// Unix ms of the record.
    pub ts_ms: u64,
    /// Unix ms of the first attempt summarised.
    pub first_seen_ms: u64,
    /// Unix ms of the last.
    pub last_seen_ms: u64,
    /// Always `tcp`.
    pub proto: &'static str,
    /// Source address, or `*` for the sources past the per-interval limit.
    pub src: String,
    /// Source MAC of the first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<String>,
    /// Identity of the source when the summary began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Verdict the attempts had (or would have had).
    pub verdict: Verdict,
    /// Attempts that were tracked and ended without an answer (timed out, reset, evicted).
    pub flows: u64,
    /// Of those, evicted to make room in the table.
    pub evicted: u64,
    /// Attempts never tracked: the source was at its embryonic limit.
    pub refused: u64,
    /// Client packets of the tracked attempts.
    pub pkts_out: u64,
    /// Destination ports (the first few).
    pub dports: Vec<u16>,
    /// More destination ports than listed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dports_more: bool,
    /// Destination addresses (the first few): a scan or a beacon without payload still
    /// names where it went.
    pub dsts: Vec<String>,
    /// More destination addresses than listed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dsts_more: bool,
}

/// Periodic engine statistics: counters, learned destinations, AI-domain DNS queries.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRecord {
    /// Always `stats`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix ms.
    pub ts_ms: u64,
    /// Flows in the table.
    pub flows: usize,
    /// Of those, TCP flows whose handshake has not completed.
    pub attempts: usize,
    /// Engine counters.
    pub counters: crate::engine::Counters,
    /// Divert counters (all zero without interception).
    pub divert: crate::engine::DivertCounters,
    /// NAT entries: diverted client connections, upstream connections.
    pub nat_entries: (usize, usize),
    /// Destinations learned for divert (from DNS answers and ClientHellos), still valid.
    pub learned_destinations: usize,
    /// DNS queries for names in a category, per identity and category, since the start.
    pub dns_queries: Vec<DnsQueryCount>,
}

/// DNS queries for a category's names from one identity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DnsQueryCount {
    /// Identity name.
    pub identity: String,
    /// Category name.
    pub category: String,
    /// Number of queries.
    pub count: u64,
}

/// Any record the data plane writes (one JSON object per line).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Record {
    /// A flow record.
    Flow(Box<FlowRecord>),
    /// A statistics record.
    Stats(Box<StatsRecord>),
    /// A summary of connection attempts that never completed.
    Embryonic(Box<EmbryonicRecord>),
}

impl From<FlowRecord> for Record {
    fn from(r: FlowRecord) -> Self {
        Record::Flow(Box::new(r))
    }
}
