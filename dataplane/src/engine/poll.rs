//! What the engine gives back, polled as quinn-proto's connection is (`poll_transmit`,
//! `poll_timeout`): frames to send, records, fast-path operations, and the time it next
//! needs the clock; with the timers it keeps (the idle sweep, statistics) and the shutdown
//! (ARCHITECTURE.md, "The packet path"). The owner drains each after every call that may
//! have produced some: the order within each is the order things happened.

use super::{Engine, Now, OffloadOp, Side};
use crate::flow::{EndReason, Flow};
use crate::record::{DnsQueryCount, FlowRecord, Record, StatsRecord};

/// How often idle flows are looked for, at most (a flow ends up to this late past its
/// timeout); shorter when a timeout is (a quarter of the shortest).
const SWEEP_MS: u64 = 1_000;

/// A frame the engine emits: to a port (an Ethernet frame), or to the TUN (a raw IP packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes.
    pub side: Side,
    /// Its bytes.
    pub frame: Vec<u8>,
}

impl Engine {
    /// The next frame to send (released held segments, resets, ICMP refusals, the divert's
    /// packets). After each [`Engine::handle`], the frames polled go out before the handled
    /// frame when it is forwarded: the engine released them first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next record (flow ends and updates, summaries of attempts, statistics).
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// True when records wait to be polled.
    pub fn has_records(&self) -> bool {
        !self.records.is_empty()
    }

    /// The next operation for the kernel fast path, in the order the map must follow.
    pub fn poll_offload(&mut self) -> Option<OffloadOp> {
        self.offload_ops.pop_front()
    }

    /// When [`Engine::handle_timeout`] must next be called (monotonic ms): the next sweep for
    /// idle flows and periodic records, or the next statistics, whichever is first.
    pub fn poll_timeout(&self) -> u64 {
        let stats = self.last_stats.saturating_add(self.settings.report_interval_ms);
        self.next_sweep.min(stats)
    }

    /// The sweep's period: a second, or a quarter of the shortest timeout (at least 10 ms).
    fn sweep_period(&self) -> u64 {
        let t = self.settings.timeouts;
        let shortest = [t.tcp_embryonic, t.tcp_established, t.tcp_closing, t.udp, t.other]
            .into_iter()
            .min()
            .unwrap_or(SWEEP_MS);
        (shortest / 4).clamp(10, SWEEP_MS)
    }

    /// The summaries of attempts that never completed, as records.
    fn summarise(&mut self, now: Now) {
        let records = &mut self.records;
        records.extend(self.embryonic.take(now).map(|r| Record::Embryonic(Box::new(r))));
    }

    /// Does what is due at `now`: at [`Engine::poll_timeout`] or later, idle flows end and
    /// long ones get their periodic records (a sweep), and statistics are written once per
    /// report interval. Earlier calls do nothing that is not due.
    pub fn handle_timeout(&mut self, now: Now) {
        if now.mono_ms >= self.next_sweep {
            self.next_sweep = now.mono_ms + self.sweep_period();
            self.sweep(now);
        }
        if now.mono_ms.saturating_sub(self.last_stats) >= self.settings.report_interval_ms {
            self.last_stats = now.mono_ms;
            self.learned.retain(|_, l| l.expires_mono > now.mono_ms);
            self.summarise(now);
            let stats = self.stats(now);
            self.records.push_back(Record::Stats(Box::new(stats)));
        }
    }

    /// Ends the flows past their idle timeout and writes the periodic records of long ones.
    fn sweep(&mut self, now: Now) {
        let mut gone = Vec::new();
        self.table.expire(now.mono_ms, |f, why| gone.push((f, why)));
        for (f, why) in gone {
            self.end(f, why, now);
        }
        self.classes.purge();
        self.hello_names.purge();
        self.expire_upstreams(now);
        self.counters.fragments_dropped += self.defrag.expire(now.mono_ms) as u64;
        let records = &mut self.records;
        let interval = self.settings.report_interval_ms;
        for f in self.table.due_reports(now.mono_ms, interval) {
            f.last_report = now.mono_ms;
            // An attempt that never completed has nothing to report (a SYN flood would
            // otherwise write a record per attempt per interval); it is summarised at its end.
            if !f.never_completed() && now.mono_ms.saturating_sub(f.first_mono) >= interval {
                records.push_back(FlowRecord::update(f, now).into());
            }
        }
    }

    /// Ends every flow (records with reason `shutdown`).
    pub fn shutdown(&mut self, now: Now) {
        let flows: Vec<Flow> = self.table.drain().collect();
        for f in flows {
            Self::withdraw(&mut self.offload_ops, &f);
            self.record_end(&f, EndReason::Shutdown, now);
        }
        self.summarise(now);
        self.divert = self.settings.divert.map(super::divert::DivertState::new);
        let stats = self.stats(now);
        self.records.push_back(Record::Stats(Box::new(stats)));
    }

    pub(super) fn stats(&self, now: Now) -> StatsRecord {
        let mut dns_queries: Vec<DnsQueryCount> = self
            .dns_queries
            .iter()
            .map(|((identity, category), count)| DnsQueryCount {
                identity: identity.clone(),
                category: category.clone(),
                count: *count,
            })
            .collect();
        dns_queries.sort_by(|a, b| (&a.identity, &a.category).cmp(&(&b.identity, &b.category)));
        StatsRecord {
            kind: "stats",
            ts_ms: now.unix_ms,
            flows: self.table.len(),
            attempts: self.table.attempts(),
            counters: self.counters,
            divert: self.divert_counters,
            nat_entries: self.nat_entries(),
            learned_destinations: self
                .learned
                .values()
                .filter(|l| l.expires_mono > now.mono_ms)
                .count(),
            dns_queries,
        }
    }
}
