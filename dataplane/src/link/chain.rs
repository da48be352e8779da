//! The data plane's record chain (ARCHITECTURE.md, "Evidence"): as the spool numbers a flow or
//! request record, it puts the chain position and the link of the record before it in front of
//! the record's members, `{"seq":S,"chain":N,"prev":"<64 hex>",…}`, and the record's own link
//! is [`sluice_audit::link`] of that line exactly as spooled and sent. Control recomputes each
//! link as the records arrive and refuses a record that does not continue the chain.
//!
//! Statistics, alarms and recordings are not chained (control does not store the first two as
//! records; a recording is sealed to the customer's key and stored apart), so chain positions
//! count flow and request records only, without gaps.
//!
//! The head survives restarts: it is read back from the last chained line still spooled, or,
//! when every segment holding one was acknowledged and deleted, from `DIR/chain.head`, written
//! each time the spool starts a new segment.

use std::io;
use std::path::Path;

use sluice_audit::{GENESIS, Link, link};

/// Where a chain stands: the position the next chained record gets and the link of the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Position of the next chained record (1 for a new chain).
    pub next: u64,
    /// Link of the record before it ([`GENESIS`] for a new chain).
    pub link: Link,
}

impl Default for Head {
    fn default() -> Self {
        Head { next: 1, link: GENESIS }
    }
}

/// File name of the head kept beside the segments.
pub const HEAD_FILE: &str = "chain.head";

/// True for the records the chain covers: flow and request records (their serialisations
/// begin with their type).
pub fn covers(record: &str) -> bool {
    record.starts_with("{\"type\":\"flow\"") || record.starts_with("{\"type\":\"request\"")
}

/// The chain's members as they follow `{"seq":S,` in a chained line (no trailing comma).
pub fn members(head: &Head, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"chain\":");
    out.extend_from_slice(head.next.to_string().as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(head.link.to_hex().as_bytes());
    out.push(b'"');
}

/// The chain position and previous link a spooled line carries, read from its prefix
/// (`{"seq":S,"chain":N,"prev":"…"`), or `None` for a line outside the chain.
pub fn read(line: &[u8]) -> Option<(u64, Link)> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_digit()).count()..];
    let rest = rest.strip_prefix(b",\"chain\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let n: u64 = std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"prev\":\"")?;
    let prev = Link::from_hex(std::str::from_utf8(rest.get(..64)?).ok()?)?;
    (rest.get(64) == Some(&b'"')).then_some((n, prev))
}

/// The head after the chained `line` (its link, and the position after it).
pub fn after(line: &[u8]) -> Option<Head> {
    let (n, prev) = read(line)?;
    Some(Head { next: n.checked_add(1)?, link: link(&prev, n, line) })
}

/// The head kept in `dir`, if a readable one is there.
pub fn load(dir: &Path) -> Option<Head> {
    let text = std::fs::read_to_string(dir.join(HEAD_FILE)).ok()?;
    let (n, hex) = text.trim().split_once(' ')?;
    Some(Head { next: n.parse().ok()?, link: Link::from_hex(hex)? })
}

/// Keeps `head` in `dir` (written aside, then renamed over the last).
pub fn store(dir: &Path, head: &Head) -> io::Result<()> {
    let tmp = dir.join(format!("{HEAD_FILE}.tmp"));
    std::fs::write(&tmp, format!("{} {}\n", head.next, head.link))?;
    std::fs::rename(tmp, dir.join(HEAD_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chained_line_reads_back_and_links() {
        let head = Head { next: 7, link: Link([0xab; 32]) };
        let mut line = b"{\"seq\":42,".to_vec();
        members(&head, &mut line);
        line.extend_from_slice(b",\"type\":\"flow\"}");
        assert_eq!(read(&line), Some((7, Link([0xab; 32]))));
        let next = after(&line).unwrap();
        assert_eq!(next.next, 8);
        assert_eq!(next.link, link(&Link([0xab; 32]), 7, &line));
        for other in [
            &b"{\"seq\":42,\"type\":\"stats\"}"[..],
            b"{\"seq\":42,\"chain\":x}",
            b"{\"seq\":42,\"chain\":1,\"prev\":\"00\"}",
            b"",
        ] {
            assert_eq!(read(other), None);
        }
        assert!(covers("{\"type\":\"request\",\"ts_ms\":1}"));
        assert!(!covers("{\"type\":\"stats\"}"));
        assert!(!covers("{\"type\":\"recording\"}"));
    }

    #[test]
    fn the_head_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("sluice-chain-head-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(load(&dir), None);
        let head = Head { next: 99, link: Link([3; 32]) };
        store(&dir, &head).unwrap();
        assert_eq!(load(&dir), Some(head));
        std::fs::write(dir.join(HEAD_FILE), "junk").unwrap();
        assert_eq!(load(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
