//! Sans-IO hiding of the `ech` parameter of HTTPS and SVCB records (RFC 9460) in DNS
//! responses, so that clients never try Encrypted ClientHello for the names it is hidden for
//! and their ClientHellos show the real server name.
//!
//! The parameter is not cut out, which would move every byte after it and break the
//! compression pointers of later records into them: the record's other parameters move up,
//! keeping their order, and the `ech` one becomes a private-use key (65280–65534, RFC 9460
//! §14.3.2) with its value zeroed, which clients ignore. The message keeps its length, so the
//! datagram only needs a new checksum. (A record whose `mandatory` list names `ech` becomes
//! one clients must ignore as a whole: no ECH either.) Answers signed with DNSSEC no longer
//! validate, which stub resolvers in browsers do not check.
//!
//! Bounded: at most 256 records are read; any input returns an error or an answer, never a
//! panic.

use super::dns::{DnsError, read_name, u16_at};

/// HTTPS and SVCB record types.
const TYPE_SVCB: u16 = 64;
const TYPE_HTTPS: u16 = 65;
/// The SvcParamKey of the ECH configuration list.
const KEY_ECH: u16 = 5;
/// Private-use SvcParamKeys, the highest first: the hidden parameter takes the first one the
/// record does not already use.
const PRIVATE_KEYS: std::ops::RangeInclusive<u16> = 65280..=65534;
/// Records read at most (all sections).
const MAX_RECORDS: usize = 256;

/// A copy of DNS response `msg` in which every HTTPS or SVCB record whose owner name `hide`
/// accepts has its `ech` parameter hidden; `Ok(None)` when there is none to hide.
pub fn hide_ech(msg: &[u8], hide: impl Fn(&str) -> bool) -> Result<Option<Vec<u8>>, DnsError> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 {
        return Ok(None);
    }
    let qd = u16_at(msg, 4)?;
    let records = [6, 8, 10]
        .iter()
        .map(|&at| u16_at(msg, at).map(usize::from))
        .sum::<Result<usize, _>>()?
        .min(MAX_RECORDS);
    let mut pos = 12;
    for _ in 0..qd {
        let (_, next) = read_name(msg, pos)?;
        pos = next + 4;
    }
    let mut out: Option<Vec<u8>> = None;
    for _ in 0..records {
        let (owner, next) = read_name(msg, pos)?;
        let typ = u16_at(msg, next)?;
        let rdlen = usize::from(u16_at(msg, next + 8)?);
        let at = next + 10;
        let rdata = msg.get(at..at + rdlen).ok_or(DnsError::Truncated)?;
        if (typ == TYPE_HTTPS || typ == TYPE_SVCB)
            && hide(&owner)
            && let Some(new) = hidden(rdata)
        {
            out.get_or_insert_with(|| msg.to_vec())[at..at + rdlen].copy_from_slice(&new);
        }
        pos = at + rdlen;
    }
    Ok(out)
}

/// The RDATA of one HTTPS/SVCB record with its `ech` parameter hidden, or `None` when it has
/// none (or is malformed: it is left to the client to refuse).
fn hidden(rdata: &[u8]) -> Option<Vec<u8>> {
    let priority = u16::from_be_bytes([*rdata.first()?, *rdata.get(1)?]);
    if priority == 0 {
        // AliasMode: no parameters.
        return None;
    }
    let params = 2 + target_len(rdata.get(2..)?)?;
    // (key, whole parameter) in order.
    let mut list: Vec<(u16, &[u8])> = Vec::new();
    let mut pos = params;
    while pos < rdata.len() {
        let key = u16::from_be_bytes([*rdata.get(pos)?, *rdata.get(pos + 1)?]);
        let len = usize::from(u16::from_be_bytes([*rdata.get(pos + 2)?, *rdata.get(pos + 3)?]));
        list.push((key, rdata.get(pos..pos + 4 + len)?));
        pos += 4 + len;
    }
    let (_, ech) = *list.iter().find(|(k, _)| *k == KEY_ECH)?;
    // The private keys in use, as a set (one pass, whatever the number of parameters).
    let mut used = [false; 255];
    for (k, _) in &list {
        if let Some(i) = k.checked_sub(*PRIVATE_KEYS.start())
            && let Some(u) = used.get_mut(usize::from(i))
        {
            *u = true;
        }
    }
    let key = PRIVATE_KEYS.rev().find(|k| !used[usize::from(k - PRIVATE_KEYS.start())])?;
    let mut out = Vec::with_capacity(rdata.len());
    out.extend_from_slice(&rdata[..params]);
    // Keys stay in increasing order: the others as they were, then the hidden one, unless a
    // private key above it is already there (then it goes before that one).
    let mut placed = false;
    for &(k, p) in &list {
        if k == KEY_ECH {
            continue;
        }
        if !placed && k > key {
            push_hidden(&mut out, key, ech.len() - 4);
            placed = true;
        }
        out.extend_from_slice(p);
    }
    if !placed {
        push_hidden(&mut out, key, ech.len() - 4);
    }
    (out.len() == rdata.len()).then_some(out)
}

fn push_hidden(out: &mut Vec<u8>, key: u16, len: usize) {
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.resize(out.len() + len, 0);
}

/// Length of the uncompressed TargetName at the start of `b` (RFC 9460 forbids compressing
/// it); `None` when it is malformed or compressed.
fn target_len(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let len = usize::from(*b.get(pos)?);
        if len == 0 {
            return Some(pos + 1);
        }
        if len & 0xc0 != 0 || pos + 1 + len > 255 {
            return None;
        }
        pos += 1 + len;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::dns;

    /// An HTTPS record's RDATA: priority 1, target ".", then `params` as (key, value).
    pub fn rdata(params: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = vec![0, 1, 0];
        for (k, v) in params {
            r.extend_from_slice(&k.to_be_bytes());
            r.extend_from_slice(&(v.len() as u16).to_be_bytes());
            r.extend_from_slice(v);
        }
        r
    }

    /// A response to an HTTPS query for `name` with one answer of `rdata` and, after it, an
    /// A record whose owner name points back at the question.
    pub fn response(name: &str, rdata: &[u8]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 65, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 65, 0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 10]);
        m
    }

    /// The (key, value) list of the HTTPS answer of `m`.
    fn params(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let (_, q) = dns::read_name(m, 12).unwrap();
        let (_, owner_end) = dns::read_name(m, q + 4).unwrap();
        let rdlen = usize::from(dns::u16_at(m, owner_end + 8).unwrap());
        let r = &m[owner_end + 10..owner_end + 10 + rdlen];
        let mut pos = 2 + target_len(&r[2..]).unwrap();
        let mut out = Vec::new();
        while pos < r.len() {
            let k = u16::from_be_bytes([r[pos], r[pos + 1]]);
            let l = usize::from(u16::from_be_bytes([r[pos + 2], r[pos + 3]]));
            out.push((k, r[pos + 4..pos + 4 + l].to_vec()));
            pos += 4 + l;
        }
        out
    }

    const ECH: &[u8] = b"\xfe\x0d\x00\x3a ech config list";

    #[test]
    fn ech_is_hidden_for_the_names_asked_and_nothing_else_moves() {
        let r = rdata(&[(1, b"\x02h2"), (4, &[198, 51, 100, 10]), (5, ECH), (6, &[0x20; 16])]);
        let m = response("chatgpt.com", &r);
        let out = hide_ech(&m, |n| n == "chatgpt.com").unwrap().unwrap();
        assert_eq!(out.len(), m.len());
        let p = params(&out);
        let keys: Vec<u16> = p.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [1, 4, 6, 65534]);
        assert_eq!(p[3].1, vec![0; ECH.len()]);
        assert_eq!(p[0].1, b"\x02h2");
        // The rest of the message, the A record after it included, reads as before.
        let (a, b) = (dns::read(&m).unwrap(), dns::read(&out).unwrap());
        assert_eq!(a, b);
        assert_eq!(b.answers.len(), 1);
        // Other names, records without ech, AliasMode: nothing to do.
        assert_eq!(hide_ech(&m, |n| n == "example.org").unwrap(), None);
        let plain = response("chatgpt.com", &rdata(&[(1, b"\x02h2")]));
        assert_eq!(hide_ech(&plain, |_| true).unwrap(), None);
        let alias = response("chatgpt.com", &[0, 0, 3, b'c', b'd', b'n', 0]);
        assert_eq!(hide_ech(&alias, |_| true).unwrap(), None);
        // A query is never rewritten.
        let mut q = m.clone();
        q[2] &= 0x7f;
        assert_eq!(hide_ech(&q, |_| true).unwrap(), None);
    }

    #[test]
    fn private_keys_already_there_keep_their_order() {
        let r = rdata(&[(1, b"\x02h2"), (5, ECH), (65534, b"x")]);
        let out = hide_ech(&response("a.lab", &r), |_| true).unwrap().unwrap();
        let keys: Vec<u16> = params(&out).iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [1, 65533, 65534]);
    }

    #[test]
    fn hostile_messages() {
        let r = rdata(&[(1, b"\x02h2"), (5, ECH)]);
        let good = response("chatgpt.com", &r);
        for cut in 0..good.len() {
            let _ = hide_ech(&good[..cut], |_| true);
        }
        for i in 0..good.len() {
            for x in [0xff, 0x80, 0x01] {
                let mut b = good.clone();
                b[i] ^= x;
                if let Ok(Some(out)) = hide_ech(&b, |_| true) {
                    assert_eq!(out.len(), b.len());
                }
            }
        }
        // A parameter running past the record is left alone.
        let mut bad = rdata(&[(1, b"\x02h2"), (5, ECH)]);
        let n = bad.len();
        bad[n - ECH.len() - 1] = 0xff;
        assert_eq!(hide_ech(&response("a.lab", &bad), |_| true).unwrap(), None);
    }
}
