//! The spool's files (ARCHITECTURE.md, "Records and the link"): segment names, the scan of a
//! segment at open (its records, last number and chain head), lines numbered as they are
//! written, and the disk's room.

use super::*;

/// The disk's free bytes and size (`statvfs` of the spool's directory).
#[allow(unsafe_code)]
pub(super) fn disk_room(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is a C struct of integers, for which all-zero bytes are a valid value;
    // `c` is a NUL-terminated path and `st` is writable for the duration of the call.
    let (r, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st), st)
    };
    let unit = st.f_frsize;
    (r == 0).then(|| (st.f_bavail.saturating_mul(unit), st.f_blocks.saturating_mul(unit)))
}

/// Free space the spool leaves on its disk when past its bound: a twentieth of the disk, at
/// least 64 MiB.
pub(super) fn reserve(size: u64) -> u64 {
    (size / 20).max(64 << 20)
}

pub(super) fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.jsonl"))
}

/// The `seq` of a spooled line: read from its `{"seq":N` prefix, or (a line written some other
/// way) from the parsed object.
pub(super) fn seq_of(line: &[u8]) -> Option<u64> {
    if let Some(rest) = line.strip_prefix(b"{\"seq\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(n) = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse().ok()) {
            return Some(n);
        }
    }
    serde_json::from_slice::<Value>(line).ok()?.get("seq")?.as_u64()
}

/// Reads a segment back: the sequence number after its last whole record, the bytes of
/// whole records (a torn last line, from a crash mid-write, is cut off) and the chain's head
/// after its last chained record.
pub(super) fn scan(path: &Path, first: u64) -> io::Result<(u64, u64, Option<chain::Head>)> {
    let mut r = BufReader::new(File::open(path)?);
    let (mut end, mut good, mut line) = (first, 0u64, Vec::new());
    let mut last_chained: Option<Vec<u8>> = None;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        match seq_of(&line) {
            Some(s) if s >= end => end = s + 1,
            _ => break,
        }
        if chain::read(&line).is_some() {
            // Only the last one's link is needed: kept, hashed once after the scan.
            last_chained.get_or_insert_with(Vec::new).clone_from(&line);
        }
        good += n as u64;
    }
    let head = last_chained.and_then(|l| chain::after(&l[..l.len() - 1]));
    let len = std::fs::metadata(path)?.len();
    if len != good {
        tracing::warn!(file = %path.display(), cut = len - good, "spool: torn record cut off");
        OpenOptions::new().write(true).open(path)?.set_len(good)?;
    }
    Ok((end, good, head))
}

/// `records` as the spool file holds them, numbered from `first` (`seq` put in front of
/// their members, then for flow and request records their place in the chain after `head`,
/// which is moved on; a newline after each), in one buffer, with where each line is in it
/// (without its newline).
pub(super) fn numbered<'r>(
    records: impl Iterator<Item = &'r str> + Clone,
    first: u64,
    head: &mut chain::Head,
) -> (Vec<u8>, Vec<(u64, std::ops::Range<usize>)>) {
    let size = records.clone().map(|r| r.len() + 110).sum();
    let (mut buf, mut lines) = (Vec::with_capacity(size), Vec::new());
    for (seq, r) in (first..).zip(records) {
        let members = r.strip_prefix('{').unwrap_or(r);
        let start = buf.len();
        buf.extend_from_slice(b"{\"seq\":");
        buf.extend_from_slice(itoa(seq, &mut [0u8; 20]).as_bytes());
        let chained = chain::covers(r);
        if chained {
            buf.push(b',');
            chain::members(head, &mut buf);
        }
        if !members.starts_with('}') {
            buf.push(b',');
        }
        buf.extend_from_slice(members.as_bytes());
        if chained {
            let link = sluice_audit::link(&head.link, head.next, &buf[start..]);
            *head = chain::Head { next: head.next + 1, link };
        }
        lines.push((seq, start..buf.len()));
        buf.push(b'\n');
    }
    (buf, lines)
}

/// `n` in decimal, written into `buf`.
pub(super) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}
