//! Sans-IO DNS message reading (RFC 1035, AAAA from RFC 3596): the question name of queries and
//! responses, and the A/AAAA answers with their TTLs. Bounded: names at most 255 bytes, at most
//! 16 compression jumps, at most 64 answers; any input returns an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than its header or a record says.
    #[error("truncated DNS message")]
    Truncated,
    /// A name is malformed (too long, bad label, pointer loop).
    #[error("malformed name in DNS message")]
    BadName,
}

/// One address answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Owner name of the record (lowercase, no trailing dot).
    pub name: String,
    /// The address.
    pub addr: IpAddr,
    /// TTL in seconds.
    pub ttl: u32,
}

/// A read DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// True for responses.
    pub response: bool,
    /// The first question's name (lowercase, no trailing dot).
    pub question: Option<String>,
    /// CNAME targets met in the answers (lowercase).
    pub aliases: Vec<String>,
    /// A and AAAA answers.
    pub answers: Vec<Answer>,
}

const MAX_ANSWERS: usize = 64;

/// Reads a name starting at `pos`; returns it and the position after it (in the original
/// message, i.e. after the first pointer if any).
pub(super) fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                let label =
                    msg.get(pos + 1..pos + 1 + usize::from(len)).ok_or(DnsError::Truncated)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for b in label {
                    if !b.is_ascii_graphic() || *b == b'.' {
                        return Err(DnsError::BadName);
                    }
                    name.push(char::from(b.to_ascii_lowercase()));
                }
                if name.len() > 255 {
                    return Err(DnsError::BadName);
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                jumps += 1;
                if jumps > 16 {
                    return Err(DnsError::BadName);
                }
                end.get_or_insert(pos + 2);
                pos = (usize::from(len & 0x3f) << 8) | usize::from(lo);
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

pub(super) fn u16_at(msg: &[u8], pos: usize) -> Result<u16, DnsError> {
    msg.get(pos..pos + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(DnsError::Truncated)
}

/// The name Firefox looks up to learn whether the network lets it turn on DNS over HTTPS: an
/// NXDOMAIN answer keeps DoH off (support.mozilla.org, "Canary domain").
pub const DOH_CANARY: &str = "use-application-dns.net";

/// The NXDOMAIN answer to `query`: its id, opcode, recursion-desired flag and single question,
/// no records. `None` for anything but a query with one question.
pub fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16_at(query, 4).ok()? != 1 {
        return None;
    }
    let (_, end) = read_name(query, 12).ok()?;
    let question = query.get(12..end + 4)?;
    let mut out = Vec::with_capacity(12 + question.len());
    out.extend_from_slice(&query[..2]);
    // QR, the query's opcode and RD; RA; RCODE 3 (name error).
    out.push(0x80 | (query[2] & 0x79));
    out.push(0x80 | 3);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    Some(out)
}

/// Reads a DNS message (as carried over UDP).
pub fn read(msg: &[u8]) -> Result<Message, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Truncated);
    }
    let response = msg[2] & 0x80 != 0;
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    let mut question = None;
    for i in 0..qd.min(4) {
        let (name, next) = read_name(msg, pos)?;
        if i == 0 {
            question = Some(name);
        }
        pos = next + 4;
    }
    let mut out = Message { response, question, aliases: Vec::new(), answers: Vec::new() };
    if qd > 4 {
        return Ok(out);
    }
    for _ in 0..an.min(MAX_ANSWERS as u16) {
        let (name, next) = read_name(msg, pos)?;
        let typ = u16_at(msg, next)?;
        let ttl = msg
            .get(next + 4..next + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DnsError::Truncated)?;
        let rdlen = usize::from(u16_at(msg, next + 8)?);
        let rdata_at = next + 10;
        let rdata = msg.get(rdata_at..rdata_at + rdlen).ok_or(DnsError::Truncated)?;
        match (typ, rdlen) {
            (1, 4) => out.answers.push(Answer {
                name,
                addr: IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
                ttl,
            }),
            (28, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(rdata);
                out.answers.push(Answer { name, addr: IpAddr::V6(Ipv6Addr::from(a)), ttl });
            }
            (5, _) => {
                let (target, _) = read_name(msg, rdata_at)?;
                out.aliases.push(target);
            }
            _ => {}
        }
        pos = rdata_at + rdlen;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a response for `name` with the given A/AAAA answers (compressed owner names).
    pub fn response(name: &str, addrs: &[IpAddr], ttl: u32) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, addrs.len() as u8, 0, 0, 0, 0];
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        for a in addrs {
            m.extend_from_slice(&[0xc0, 12]);
            match a {
                IpAddr::V4(v4) => {
                    m.extend_from_slice(&[0, 1, 0, 1]);
                    m.extend_from_slice(&ttl.to_be_bytes());
                    m.extend_from_slice(&[0, 4]);
                    m.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    m.extend_from_slice(&[0, 28, 0, 1]);
                    m.extend_from_slice(&ttl.to_be_bytes());
                    m.extend_from_slice(&[0, 16]);
                    m.extend_from_slice(&v6.octets());
                }
            }
        }
        m
    }

    #[test]
    fn reads_answers() {
        let addrs: Vec<IpAddr> =
            vec!["198.51.100.10".parse().unwrap(), "2001:db8:5100::10".parse().unwrap()];
        let m = read(&response("API.openai.com", &addrs, 300)).unwrap();
        assert!(m.response);
        assert_eq!(m.question.as_deref(), Some("api.openai.com"));
        assert_eq!(m.answers.len(), 2);
        assert_eq!(
            m.answers[0],
            Answer { name: "api.openai.com".into(), addr: addrs[0], ttl: 300 }
        );
        assert_eq!(m.answers[1].addr, addrs[1]);
    }

    #[test]
    fn hostile_messages() {
        assert_eq!(read(&[0; 5]), Err(DnsError::Truncated));
        // A pointer to itself.
        let mut m = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(read(&m), Err(DnsError::BadName));
        m[12] = 0x80;
        assert_eq!(read(&m), Err(DnsError::BadName));
        let good = response("example.org", &["192.0.2.1".parse().unwrap()], 5);
        for cut in 0..good.len() {
            assert!(read(&good[..cut]).is_err(), "prefix {cut}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = read(&b);
        }
    }

    #[test]
    fn nxdomain_answers_the_query_it_was_given() {
        let mut q = vec![0xab, 0xcd, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in DOH_CANARY.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]); // EDNS OPT, not echoed
        let a = nxdomain(&q).unwrap();
        assert_eq!(&a[..2], &[0xab, 0xcd]);
        assert_eq!((a[2], a[3] & 0x0f), (0x81, 3));
        let m = read(&a).unwrap();
        assert!(m.response && m.answers.is_empty());
        assert_eq!(m.question.as_deref(), Some(DOH_CANARY));
        // Not a query, or not one question: no answer.
        assert!(nxdomain(&a).is_none());
        let mut two = q.clone();
        two[5] = 2;
        assert!(nxdomain(&two).is_none());
        assert!(nxdomain(&q[..20]).is_none());
    }
}
