//! The walk over a chain as stored: each row's link recomputed from its bytes, each row's
//! `prev` compared with the link before it, sequence numbers followed, and signed checkpoints
//! compared with the links at their sequence numbers. Every break is a [`Finding`] naming the
//! sequence number and the row's storage position, so an auditor can look at it.
//!
//! Rows are given in storage order (the order they were written); two rows stored in each
//! other's place are reported as reordered and then read in sequence order. The verifier keeps
//! one row of lookahead, never the records: a chain of any length verifies in constant memory.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use ed25519_dalek::VerifyingKey;

use crate::chain::{GENESIS, Link, link};
use crate::checkpoint::Checkpoint;

/// A stored record of a chain.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Where it is stored (the store's row id).
    pub pos: u64,
    /// Its sequence number in the chain.
    pub seq: u64,
    /// The link it says comes before it.
    pub prev: Link,
    /// Its link as stored.
    pub link: Link,
    /// Its bytes as stored.
    pub record: &'a [u8],
}

/// What kind of break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A record (or its link) is not what was written.
    Changed,
    /// Records are missing.
    Removed,
    /// A record was added that the chain never had.
    Inserted,
    /// Records are stored out of their order.
    Reordered,
    /// Sequence numbers were skipped while the chain holds (the writer numbered past them), or
    /// records are missing that the writer's own log says never arrived
    /// ([`Verifier::expect_gap`]).
    Gap,
    /// A checkpoint whose signature does not verify.
    ForgedCheckpoint,
}

impl Kind {
    /// The name reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Changed => "changed",
            Kind::Removed => "removed",
            Kind::Inserted => "inserted",
            Kind::Reordered => "reordered",
            Kind::Gap => "gap",
            Kind::ForgedCheckpoint => "forged-checkpoint",
        }
    }
}

/// One break, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What.
    pub kind: Kind,
    /// The sequence number it concerns (the first, for a range).
    pub seq: u64,
    /// The last sequence number of a range (removed records, a gap).
    pub last_seq: Option<u64>,
    /// The storage position of the row it concerns, if a row shows it.
    pub pos: Option<u64>,
    /// In words.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at seq {}", self.kind.as_str(), self.seq)?;
        if let Some(l) = self.last_seq.filter(|l| *l != self.seq) {
            write!(f, "..={l}")?;
        }
        if let Some(p) = self.pos {
            write!(f, " (row {p})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows read.
    pub records: u64,
    /// The first and last sequence numbers read.
    pub first_seq: Option<u64>,
    /// See `first_seq`.
    pub last_seq: Option<u64>,
    /// Verification started at the checkpoint of this sequence number (records before it
    /// were deleted by retention), not at the chain's start.
    pub from_checkpoint: Option<u64>,
    /// Checkpoints whose heads were compared with the chain.
    pub checkpoints_matched: u64,
    /// Every break, in the order found.
    pub findings: Vec<Finding>,
}

impl Report {
    /// No break.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Sum {
    pos: u64,
    seq: u64,
    prev: Link,
    link: Link,
    intact: bool,
    swapped: bool,
}

/// Walks one chain: [`Verifier::push`] each stored row in storage order, then
/// [`Verifier::finish`].
#[derive(Debug)]
pub struct Verifier {
    checkpoints: BTreeMap<u64, Checkpoint>,
    /// Ranges known to be missing (first → last, why).
    gaps: BTreeMap<u64, (u64, String)>,
    /// Where the walk began ([`Verifier::start_after`]).
    start: Option<u64>,
    /// The last position the store says it has ([`Verifier::expect_head`]).
    head: Option<u64>,
    ahead: VecDeque<Sum>,
    last: Option<Sum>,
    report: Report,
}

impl Verifier {
    /// A walk of a chain whose checkpoints are `checkpoints` (those of other chains are
    /// ignored), signed by `key`. Forged checkpoints are findings and count for nothing.
    pub fn new(chain: &str, key: &VerifyingKey, checkpoints: Vec<Checkpoint>) -> Verifier {
        let mut report = Report::default();
        let mut kept = BTreeMap::new();
        for cp in checkpoints.into_iter().filter(|c| c.chain == chain) {
            match cp.verify(key) {
                Ok(()) => {
                    kept.insert(cp.seq, cp);
                }
                Err(_) => report.findings.push(Finding {
                    kind: Kind::ForgedCheckpoint,
                    seq: cp.seq,
                    last_seq: None,
                    pos: None,
                    detail: format!("the checkpoint signed at {} ms does not verify", cp.ts_ms),
                }),
            }
        }
        Verifier {
            checkpoints: kept,
            gaps: BTreeMap::new(),
            start: None,
            head: None,
            ahead: VecDeque::new(),
            last: None,
            report,
        }
    }

    /// Records `from..=to` are known to be missing for `why` (the store's own log said so
    /// when they did not arrive): a break covering only such ranges is a gap, not a removal.
    pub fn expect_gap(&mut self, from: u64, to: u64, why: &str) {
        self.gaps.insert(from, (to.max(from), why.to_owned()));
    }

    /// Why `from..=to` is missing, if known ranges cover all of it.
    fn known_gap(&self, from: u64, to: u64) -> Option<String> {
        let mut at = from;
        let mut why: Vec<&str> = Vec::new();
        while at <= to {
            let (_, (end, w)) =
                self.gaps.range(..=at).next_back().filter(|(_, (end, _))| *end >= at)?;
            if !why.contains(&w.as_str()) {
                why.push(w);
            }
            at = end.checked_add(1)?;
        }
        Some(why.join("; "))
    }

    /// The next stored row.
    pub fn push(&mut self, row: Row<'_>) {
        let intact = link(&row.prev, row.seq, row.record) == row.link;
        self.report.records += 1;
        self.ahead.push_back(Sum {
            pos: row.pos,
            seq: row.seq,
            prev: row.prev,
            link: row.link,
            intact,
            swapped: false,
        });
        while self.ahead.len() > 1 {
            self.step();
        }
    }

    /// The report, once every row was pushed.
    pub fn finish(mut self) -> Report {
        while !self.ahead.is_empty() {
            self.step();
        }
        // Records after the last one stored, up to a signed checkpoint or the head the store
        // says it has: the tail was cut (unless the writer's log says they never arrived).
        let cut_after = match (self.last, self.start) {
            (Some(l), _) => Some(l.seq),
            // Nothing read after where the walk began: it began at the last record.
            (None, Some(s)) => Some(s),
            // Nothing stored: the lowest checkpoint is the retention cut.
            (None, None) => self.checkpoints.keys().next().copied(),
        };
        let top = self.checkpoints.iter().next_back().map(|(&n, cp)| (n, Some(cp.ts_ms)));
        let top = match (top, self.head) {
            (Some((n, ts)), Some(h)) if n >= h => Some((n, ts)),
            (_, Some(h)) => Some((h, None)),
            (t, None) => t,
        };
        if let (Some(after), Some((top, ts))) = (cut_after, top)
            && top > after
        {
            let from = after.saturating_add(1);
            match self.known_gap(from, top) {
                Some(why) => self.found(Kind::Gap, from, Some(top), None, why),
                None => {
                    let detail = match ts {
                        Some(ts) => format!(
                            "the records up to the checkpoint signed at {ts} ms are gone (the tail was cut)"
                        ),
                        None => format!(
                            "the store's chain head is at {top}: the records after the last one stored are gone"
                        ),
                    };
                    self.found(Kind::Removed, from, Some(top), None, detail);
                }
            }
        }
        self.report
    }

    /// The walk begins after position `after` (records up to it were not asked for): the
    /// checkpoint there anchors it.
    pub fn start_after(&mut self, after: u64) {
        self.start = (after > 0).then_some(after);
    }

    /// The store says its chain's last record is at `n`: records short of it are missing.
    pub fn expect_head(&mut self, n: u64) {
        self.head = Some(n);
    }

    fn found(
        &mut self,
        kind: Kind,
        seq: u64,
        last_seq: Option<u64>,
        pos: Option<u64>,
        detail: String,
    ) {
        self.report.findings.push(Finding { kind, seq, last_seq, pos, detail });
    }

    /// Takes the first row of the lookahead into the chain.
    fn step(&mut self) {
        // Two rows in each other's place: the next one is the one the chain expects.
        if let (Some(p), [r, n, ..]) = (self.last, self.ahead.make_contiguous())
            && r.seq > p.seq.saturating_add(1)
            && n.seq == p.seq.saturating_add(1)
            && !r.swapped
        {
            let (rs, rp, ns) = (r.seq, r.pos, n.seq);
            r.swapped = true;
            n.swapped = true;
            self.ahead.swap(0, 1);
            self.found(Kind::Reordered, rs, None, Some(rp), format!("stored before seq {ns}"));
        }
        let Some(r) = self.ahead.pop_front() else { return };
        let next = self.ahead.front().copied();
        if self.report.first_seq.is_none() {
            self.report.first_seq = Some(r.seq);
        }
        if !r.intact {
            self.found(
                Kind::Changed,
                r.seq,
                None,
                Some(r.pos),
                "the record does not match its link".into(),
            );
        }
        let accept = match self.last {
            None => {
                self.first(&r);
                true
            }
            Some(p) if r.seq == p.seq => self.duplicate(p, r, next),
            Some(p) if r.seq < p.seq => {
                self.behind(p, &r);
                false
            }
            Some(p) if r.seq > p.seq.saturating_add(1) => {
                let (from, to) = (p.seq + 1, r.seq - 1);
                if r.prev == p.link {
                    self.found(
                        Kind::Gap,
                        from,
                        Some(to),
                        Some(r.pos),
                        "numbers skipped, the chain holds".into(),
                    );
                } else if let Some(why) = self.known_gap(from, to) {
                    self.found(Kind::Gap, from, Some(to), Some(r.pos), why);
                } else {
                    self.found(
                        Kind::Removed,
                        from,
                        Some(to),
                        Some(r.pos),
                        "missing between the rows around them".into(),
                    );
                }
                true
            }
            Some(p) => {
                if r.prev != p.link {
                    self.found(
                        Kind::Changed,
                        p.seq,
                        None,
                        Some(p.pos),
                        format!("its link was rewritten: seq {} committed to another", r.seq),
                    );
                }
                true
            }
        };
        if accept {
            self.accept(r);
        }
    }

    /// A row behind the chain's last (`p`): moved there, if its position was missing where it
    /// belongs (that removal is taken back); a second record with a position already taken
    /// otherwise (rows added to a table land at its end).
    fn behind(&mut self, p: Sum, r: &Sum) {
        let missing = self.report.findings.iter().position(|f| {
            f.kind == Kind::Removed && f.seq <= r.seq && f.last_seq.unwrap_or(f.seq) >= r.seq
        });
        let Some(i) = missing else {
            let detail =
                format!("a second record with this sequence number, stored after seq {}", p.seq);
            self.found(Kind::Inserted, r.seq, None, Some(r.pos), detail);
            return;
        };
        let f = &mut self.report.findings[i];
        let last = f.last_seq.unwrap_or(f.seq);
        if f.seq == r.seq && last == r.seq {
            self.report.findings.remove(i);
        } else if f.seq == r.seq {
            f.seq += 1;
        } else if last == r.seq {
            f.last_seq = Some(last - 1);
        }
        self.found(
            Kind::Reordered,
            r.seq,
            None,
            Some(r.pos),
            format!("stored after seq {}", p.seq),
        );
    }

    /// The first row: it follows the chain's start, or a checkpoint at a retention cut.
    fn first(&mut self, r: &Sum) {
        if r.seq <= 1 {
            if r.prev != GENESIS {
                self.found(
                    Kind::Changed,
                    r.seq,
                    None,
                    Some(r.pos),
                    "the first record does not start the chain".into(),
                );
            }
            return;
        }
        let behind = self.checkpoints.range(..r.seq - 1).next_back().map(|(&at, _)| at);
        match self.checkpoints.get(&(r.seq - 1)) {
            Some(cp) if cp.head == r.prev => self.report.from_checkpoint = Some(cp.seq),
            _ if self.known_gap(1, r.seq - 1).is_some() => {
                let why = self.known_gap(1, r.seq - 1).unwrap_or_default();
                self.found(Kind::Gap, 1, Some(r.seq - 1), Some(r.pos), why)
            }
            // A checkpoint further back, the positions after it known to be missing (a cut, or
            // the walk's start, just before a gap).
            _ if let Some(at) = behind
                && let Some(why) = self.known_gap(at + 1, r.seq - 1) =>
            {
                self.report.from_checkpoint = Some(at);
                self.found(Kind::Gap, at + 1, Some(r.seq - 1), Some(r.pos), why)
            }
            _ => self.found(
                Kind::Removed,
                1,
                Some(r.seq - 1),
                Some(r.pos),
                "missing before the first stored record, and no checkpoint marks a retention cut"
                    .into(),
            ),
        }
    }

    /// Two rows with one sequence number: the one the next row continues is the chain's.
    /// Returns whether `r` replaces `p` in the chain.
    fn duplicate(&mut self, p: Sum, r: Sum, next: Option<Sum>) -> bool {
        let r_continues =
            next.is_some_and(|n| Some(n.seq) == r.seq.checked_add(1) && n.prev == r.link);
        let p_continues =
            next.is_some_and(|n| Some(n.seq) == p.seq.checked_add(1) && n.prev == p.link);
        let (intruder, replaces) = if r_continues && !p_continues { (p, true) } else { (r, false) };
        self.found(
            Kind::Inserted,
            intruder.seq,
            None,
            Some(intruder.pos),
            "a second record with this sequence number".into(),
        );
        replaces
    }

    fn accept(&mut self, r: Sum) {
        self.report.last_seq = Some(r.seq);
        if let Some(cp) = self.checkpoints.get(&r.seq) {
            if cp.head == r.link {
                self.report.checkpoints_matched += 1;
            } else {
                let ts = cp.ts_ms;
                self.found(
                    Kind::Changed,
                    r.seq,
                    None,
                    Some(r.pos),
                    format!(
                        "the chain up to here is not the one signed at {ts} ms (rewritten since)"
                    ),
                );
            }
        }
        self.last = Some(r);
    }
}
