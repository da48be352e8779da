//! Source identities: CIDR longest-prefix match, MAC addresses, and the run-time overlay fed by
//! an IP → user directory (replaced whole, without recompiling the rules).

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;
use ipnet::IpNet;

/// Index of an identity in [`crate::Policy::identities`].
pub type IdentityId = u32;

/// A MAC address.
pub type Mac = [u8; 6];

/// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (any case).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for o in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Formats a MAC as lowercase colon-separated hex.
pub fn format_mac(m: &Mac) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Longest-prefix-match table from CIDRs to identities, one hash table per prefix length in
/// use (longest first): a lookup costs one probe per distinct prefix length.
#[derive(Debug, Default, Clone)]
pub struct CidrTable {
    v4: Vec<(u8, HashMap<u32, IdentityId>)>,
    v6: Vec<(u8, HashMap<u128, IdentityId>)>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { a & (u32::MAX << (32 - u32::from(len))) }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { a & (u128::MAX << (128 - u32::from(len))) }
}

impl CidrTable {
    /// Adds `net` → `id`, replacing an identical prefix.
    pub fn insert(&mut self, net: IpNet, id: IdentityId) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let key = mask4(n.network().into(), len);
                slot(&mut self.v4, len).insert(key, id);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = mask6(n.network().into(), len);
                slot(&mut self.v6, len).insert(key, id);
            }
        }
    }

    /// The identity of the longest prefix containing `ip`. IPv4-mapped IPv6 addresses are
    /// looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<IdentityId> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| m.get(&mask4(a, *len)).copied())
            }
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.lookup(IpAddr::V4(v4)),
                None => {
                    let a = u128::from(a);
                    self.v6.iter().find_map(|(len, m)| m.get(&mask6(a, *len)).copied())
                }
            },
        }
    }
}

fn slot<K>(v: &mut Vec<(u8, HashMap<K, IdentityId>)>, len: u8) -> &mut HashMap<K, IdentityId> {
    let pos = match v.iter().position(|(l, _)| *l <= len) {
        Some(p) if v[p].0 == len => p,
        Some(p) => {
            v.insert(p, (len, HashMap::new()));
            p
        }
        None => {
            v.push((len, HashMap::new()));
            v.len() - 1
        }
    };
    &mut v[pos].1
}

/// Who sits behind one IP address, as told by an identity feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayEntry {
    /// User name (e.g. `alice@corp`).
    pub user: Arc<str>,
    /// Groups of the user. A group that names a declared identity places the source in it.
    pub groups: Vec<Arc<str>>,
    /// Unix time (seconds) after which the entry no longer applies; `None` never expires.
    pub expires_at: Option<u64>,
}

/// The run-time identity overlay: IP → user and groups, with expiry. An immutable snapshot,
/// replaced whole by the control plane without recompiling the policy.
#[derive(Debug, Default, Clone)]
pub struct IdentityOverlay {
    entries: HashMap<IpAddr, OverlayEntry>,
}

impl IdentityOverlay {
    /// Builds an overlay from entries (a later entry for the same IP wins).
    pub fn new(entries: impl IntoIterator<Item = (IpAddr, OverlayEntry)>) -> Self {
        IdentityOverlay { entries: entries.into_iter().collect() }
    }

    /// The live entry for `ip` at unix time `now`.
    pub fn get(&self, ip: IpAddr, now: u64) -> Option<&OverlayEntry> {
        let e = self.entries.get(&ip)?;
        match e.expires_at {
            Some(t) if t <= now => None,
            _ => Some(e),
        }
    }

    /// Number of entries (expired ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates over the entries (expired ones included).
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &OverlayEntry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut t = CidrTable::default();
        t.insert("10.0.0.0/8".parse().unwrap(), 1);
        t.insert("10.20.1.0/24".parse().unwrap(), 2);
        t.insert("10.20.1.10/32".parse().unwrap(), 3);
        t.insert("fd20::/16".parse().unwrap(), 4);
        t.insert("0.0.0.0/0".parse().unwrap(), 5);
        assert_eq!(t.lookup("10.20.1.10".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("10.20.1.11".parse().unwrap()), Some(2));
        assert_eq!(t.lookup("10.3.0.1".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(5));
        assert_eq!(t.lookup("::ffff:10.20.1.10".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("fd20::1:10".parse().unwrap()), Some(4));
        assert_eq!(t.lookup("2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:AA:bb:0c:0d:0e"), Some([2, 0xaa, 0xbb, 0xc, 0xd, 0xe]));
        assert_eq!(parse_mac("02-aa-bb-0c-0d-0e"), Some([2, 0xaa, 0xbb, 0xc, 0xd, 0xe]));
        assert_eq!(parse_mac("02:aa:bb:0c:0d"), None);
        assert_eq!(parse_mac("02:aa:bb:0c:0d:0e:0f"), None);
        assert_eq!(parse_mac("2:aa:bb:0c:0d:0e"), None);
        assert_eq!(format_mac(&[2, 0xaa, 0xbb, 0xc, 0xd, 0xe]), "02:aa:bb:0c:0d:0e");
    }

    #[test]
    fn overlay_expiry() {
        let ip: IpAddr = "10.20.9.99".parse().unwrap();
        let o = IdentityOverlay::new([(
            ip,
            OverlayEntry { user: "guest".into(), groups: vec![], expires_at: Some(100) },
        )]);
        assert!(o.get(ip, 99).is_some());
        assert!(o.get(ip, 100).is_none());
    }
}
