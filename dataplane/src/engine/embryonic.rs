//! Connection attempts that never complete (a SYN flood, a scan, a server that does not
//! answer) are not recorded one by one: a million spoofed SYNs would be a million flow
//! records, and the store's row-count retention would push genuine records out. They are
//! summarised instead: one record per source and verdict per interval, with counts
//! (ARCHITECTURE.md, "Flow memory and floods").

use std::collections::BTreeSet;
use std::net::IpAddr;

use hashbrown::HashMap;

use crate::engine::Now;
use crate::flow::{EndReason, Flow, Verdict};
use crate::ident_fmt::mac;
use crate::record::EmbryonicRecord;

/// Most sources summarised one by one per interval; the rest share one record (`src` `*`).
const MAX_SOURCES: usize = 256;
/// Most destination ports, and addresses, listed per summary.
const MAX_PORTS: usize = 8;

#[derive(Debug)]
struct Summary {
    identity: Option<String>,
    src_mac: Option<[u8; 6]>,
    first_ms: u64,
    last_ms: u64,
    flows: u64,
    evicted: u64,
    refused: u64,
    pkts: u64,
    dports: BTreeSet<u16>,
    dports_more: bool,
    dsts: BTreeSet<IpAddr>,
    dsts_more: bool,
}

/// One attempt to summarise.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Verdict.
    pub verdict: Verdict,
    /// Identity, when known.
    pub identity: Option<&'a str>,
    /// Unix ms of its first packet.
    pub first_ms: u64,
    /// Unix ms of its last packet.
    pub last_ms: u64,
}

/// The summaries of the current interval.
#[derive(Debug, Default)]
pub struct Summaries {
    by_source: HashMap<(Option<IpAddr>, Verdict), Summary>,
}

impl Summaries {
    /// True when `src` has a summary for `verdict` this interval (its identity is known).
    pub fn has(&self, src: IpAddr, verdict: Verdict) -> bool {
        self.by_source.contains_key(&(Some(src), verdict))
    }

    fn entry(&mut self, a: &Attempt<'_>) -> &mut Summary {
        let mut key = (Some(a.src), a.verdict);
        if !self.by_source.contains_key(&key) && self.by_source.len() >= MAX_SOURCES {
            key.0 = None;
        }
        let s = self.by_source.entry(key).or_insert_with(|| Summary {
            identity: a.identity.map(str::to_owned),
            src_mac: key.0.map(|_| a.src_mac),
            first_ms: a.first_ms,
            last_ms: a.last_ms,
            flows: 0,
            evicted: 0,
            refused: 0,
            pkts: 0,
            dports: BTreeSet::new(),
            dports_more: false,
            dsts: BTreeSet::new(),
            dsts_more: false,
        });
        s.first_ms = s.first_ms.min(a.first_ms);
        s.last_ms = s.last_ms.max(a.last_ms);
        if s.dports.len() < MAX_PORTS || s.dports.contains(&a.dport) {
            s.dports.insert(a.dport);
        } else {
            s.dports_more = true;
        }
        if s.dsts.len() < MAX_PORTS || s.dsts.contains(&a.dst) {
            s.dsts.insert(a.dst);
        } else {
            s.dsts_more = true;
        }
        s
    }

    /// A tracked flow that ended without an answer.
    pub fn ended(&mut self, f: &Flow, why: EndReason) {
        let a = Attempt {
            src: f.client.0,
            src_mac: f.client_mac,
            dst: f.server.0,
            dport: f.server.1,
            verdict: f.verdict,
            identity: f.identity.as_deref(),
            first_ms: f.first_unix,
            last_ms: f.first_unix + f.last_mono.saturating_sub(f.first_mono),
        };
        let s = self.entry(&a);
        s.flows += 1;
        s.evicted += u64::from(why == EndReason::Evicted);
        s.pkts += f.c2s.0;
    }

    /// An attempt the table did not take (its source at its embryonic limit).
    pub fn refused(&mut self, a: &Attempt<'_>) {
        let s = self.entry(a);
        s.refused += 1;
        s.pkts += 1;
    }

    /// The interval's records (none when nothing was summarised); a new interval begins.
    pub fn take(&mut self, now: Now) -> impl Iterator<Item = EmbryonicRecord> + use<> {
        let ts_ms = now.unix_ms;
        let mut all: Vec<_> = self.by_source.drain().collect();
        all.sort_by_key(|((src, v), _)| (src.is_none(), *src, *v as u8));
        all.into_iter().map(move |((src, verdict), s)| EmbryonicRecord {
            kind: "flow",
            event: "embryonic",
            ts_ms,
            first_seen_ms: s.first_ms,
            last_seen_ms: s.last_ms,
            proto: "tcp",
            src: src.map_or_else(|| "*".to_owned(), |ip| ip.to_string()),
            src_mac: s.src_mac.map(|m| mac(&m)),
            identity: s.identity,
            verdict,
            flows: s.flows,
            evicted: s.evicted,
            refused: s.refused,
            pkts_out: s.pkts,
            dports: s.dports.into_iter().collect(),
            dports_more: s.dports_more,
            dsts: s.dsts.iter().map(IpAddr::to_string).collect(),
            dsts_more: s.dsts_more,
        })
    }
}
