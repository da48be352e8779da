//! What a client asks of an explicit proxy, sans-IO: `CONNECT host:port` (RFC 9110 §9.3.6)
//! or a request in absolute form (`GET http://host/path`, RFC 9112 §3.2.2), and the
//! `Proxy-Authorization: Basic` credentials it carries. httparse reads the head; this module
//! checks the target strictly (a host name or IP literal, a port) and never keeps more than it
//! needs. Bounded: heads at most [`MAX_PROXY_HEAD`] bytes and [`MAX_HEADERS`] fields.

use base64::Engine as _;

use super::head::MAX_HEADERS;

/// Largest proxy request head accepted.
pub const MAX_PROXY_HEAD: usize = 16 * 1024;
/// Longest host name (RFC 1035).
const MAX_HOST: usize = 253;

/// Why a proxy request was refused: each maps to a 400 (407 for credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeadError {
    /// Larger than [`MAX_PROXY_HEAD`] or more than [`MAX_HEADERS`] fields.
    #[error("proxy request head too large")]
    TooLarge,
    /// Not HTTP/1.x syntax.
    #[error("malformed proxy request: {0}")]
    Malformed(&'static str),
    /// The target is not `host:port` (CONNECT) or `http://host[:port]/…`.
    #[error("bad proxy target: {0}")]
    BadTarget(&'static str),
    /// A request in origin form (`GET /path`): not addressed to a proxy.
    #[error("not a proxy request (origin-form target)")]
    NotProxy,
    /// `Proxy-Authorization` present but not one well-formed `Basic` credential.
    #[error("bad Proxy-Authorization: {0}")]
    BadCredentials(&'static str),
}

/// A host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// A DNS name (lowercase, no trailing dot) or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Authority {
    /// Reads `host:port`, `[v6]:port`, or (with `default_port`) a bare host.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Self, ProxyHeadError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or(ProxyHeadError::BadTarget("unclosed ["))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(ProxyHeadError::BadTarget("not an IPv6 address in brackets"));
            }
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(ProxyHeadError::BadTarget("junk after ]")),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0 && !s.ends_with(':'))
                .ok_or(ProxyHeadError::BadTarget("bad port"))?,
            None => default_port.ok_or(ProxyHeadError::BadTarget("no port"))?,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let ip = host.parse::<std::net::IpAddr>().is_ok();
        let name_ok = !host.is_empty()
            && host.len() <= MAX_HOST
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ip && !name_ok {
            return Err(ProxyHeadError::BadTarget("not a host name or IP address"));
        }
        Ok(Authority { host: host.to_ascii_lowercase(), port })
    }
}

/// What the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tunnel to this authority.
    Connect(Authority),
    /// A plain HTTP request for this origin; `path` is its target in origin form.
    Forward {
        /// The origin server.
        origin: Authority,
        /// `/path?query` (`/` when the URI has none).
        path: String,
    },
}

/// `Proxy-Authorization: Basic` credentials. The secret is never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password (a virtual key, where Sluice checks them).
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// A proxy request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHead {
    /// Method (`CONNECT`, `GET`, …).
    pub method: String,
    /// What it asks for.
    pub target: Target,
    /// Its credentials, if it gave any.
    pub credentials: Option<Credentials>,
    /// Minor HTTP version.
    pub minor: u8,
    /// Bytes of the head, including the final CRLF CRLF.
    pub len: usize,
}

fn credentials(value: &[u8]) -> Result<Credentials, ProxyHeadError> {
    let bad = ProxyHeadError::BadCredentials;
    let v = std::str::from_utf8(value).map_err(|_| bad("not ASCII"))?.trim();
    let (scheme, token) = v.split_once(' ').ok_or(bad("no scheme"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad("only Basic is accepted"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad("not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
    let (user, secret) = text.split_once(':').ok_or(bad("no user:password"))?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return Err(bad("empty or unprintable user"));
    }
    Ok(Credentials { user: user.to_owned(), secret: secret.to_owned() })
}

/// Parses a proxy request head at the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHead>, ProxyHeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_PROXY_HEAD => {
            return Err(ProxyHeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyHeadError::TooLarge),
        Err(_) => return Err(ProxyHeadError::Malformed("not an HTTP/1.x request head")),
    };
    if len > MAX_PROXY_HEAD {
        return Err(ProxyHeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default();
    let uri = req.path.unwrap_or_default();
    let target = if method == "CONNECT" {
        Target::Connect(Authority::parse(uri, None)?)
    } else if uri.starts_with('/') {
        return Err(ProxyHeadError::NotProxy);
    } else {
        let rest = match uri.get(..7) {
            Some(s) if s.eq_ignore_ascii_case("http://") => &uri[7..],
            _ => {
                return Err(ProxyHeadError::BadTarget("only http:// URIs (https goes by CONNECT)"));
            }
        };
        let (auth, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if auth.contains('@') {
            return Err(ProxyHeadError::BadTarget("user information in the URI"));
        }
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        Target::Forward { origin: Authority::parse(auth, Some(80))?, path }
    };
    let mut auths =
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("proxy-authorization"));
    let credentials = match (auths.next(), auths.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(ProxyHeadError::BadCredentials("repeated")),
        (Some(h), None) => Some(credentials(h.value)?),
    };
    Ok(Some(ProxyHead {
        method: method.to_owned(),
        target,
        credentials,
        minor: req.version.unwrap_or(1),
        len,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn auth(h: &str, p: u16) -> Authority {
        Authority { host: h.into(), port: p }
    }

    #[test]
    fn connect_and_absolute_form_are_read() {
        // A ClientHello may follow the head at once: the head's length says where.
        let raw =
            b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n\x16\x03\x01";
        let h = parse(raw).unwrap().unwrap();
        assert_eq!(h.target, Target::Connect(auth("api.openai.com", 443)));
        assert_eq!((h.method.as_str(), h.len, h.credentials), ("CONNECT", raw.len() - 3, None));
        // No Host is fine for CONNECT; IPv6 literals; a trailing dot and case folded.
        let h = parse(b"CONNECT [2001:db8::1]:8443 HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.target, h.minor), (Target::Connect(auth("2001:db8::1", 8443)), 0));
        let h = parse(b"CONNECT API.OpenAI.com.:443 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.target, Target::Connect(auth("api.openai.com", 443)));
        let h = parse(b"GET http://example.org/a/b?c=d HTTP/1.1\r\nHost: example.org\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            h.target,
            Target::Forward { origin: auth("example.org", 80), path: "/a/b?c=d".into() }
        );
        let h = parse(b"POST HTTP://10.0.0.1:8080?q HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            h.target,
            Target::Forward { origin: auth("10.0.0.1", 8080), path: "/?q".into() }
        );
        assert_eq!(parse(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: a").unwrap(), None);
    }

    #[test]
    fn credentials_are_basic_only_and_never_shown() {
        // alice:vk_secret
        let h = parse(
            b"CONNECT a.b:443 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6dmtfc2VjcmV0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let c = h.credentials.unwrap();
        assert_eq!((c.user.as_str(), c.secret.as_str()), ("alice", "vk_secret"));
        assert!(!format!("{c:?}").contains("vk_secret"), "Debug shows no secret");
        for (value, why) in [
            ("Bearer abc", "only Basic is accepted"),
            ("Basic !!!", "not base64"),
            ("Basic YWxpY2U=", "no user:password"),
            ("Basic OnNlY3JldA==", "empty or unprintable user"),
            ("Basic", "no scheme"),
        ] {
            let req = format!("CONNECT a.b:443 HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n");
            assert_eq!(parse(req.as_bytes()), Err(ProxyHeadError::BadCredentials(why)), "{value}");
        }
        let twice = b"CONNECT a.b:443 HTTP/1.1\r\nProxy-Authorization: Basic YTpi\r\nproxy-authorization: Basic YTpi\r\n\r\n";
        assert_eq!(parse(twice), Err(ProxyHeadError::BadCredentials("repeated")));
    }

    #[test]
    fn hostile_targets_are_refused() {
        for (req, err) in [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", ProxyHeadError::NotProxy),
            ("CONNECT api.openai.com HTTP/1.1\r\n\r\n", ProxyHeadError::BadTarget("no port")),
            ("CONNECT a.b:0 HTTP/1.1\r\n\r\n", ProxyHeadError::BadTarget("bad port")),
            ("CONNECT a.b:70000 HTTP/1.1\r\n\r\n", ProxyHeadError::BadTarget("bad port")),
            ("CONNECT a.b: HTTP/1.1\r\n\r\n", ProxyHeadError::BadTarget("bad port")),
            ("CONNECT [::1:443 HTTP/1.1\r\n\r\n", ProxyHeadError::BadTarget("unclosed [")),
            (
                "CONNECT [nope]:443 HTTP/1.1\r\n\r\n",
                ProxyHeadError::BadTarget("not an IPv6 address in brackets"),
            ),
            (
                "CONNECT a..b:443 HTTP/1.1\r\n\r\n",
                ProxyHeadError::BadTarget("not a host name or IP address"),
            ),
            (
                "CONNECT a%2f:443 HTTP/1.1\r\n\r\n",
                ProxyHeadError::BadTarget("not a host name or IP address"),
            ),
            (
                "GET https://a.b/ HTTP/1.1\r\n\r\n",
                ProxyHeadError::BadTarget("only http:// URIs (https goes by CONNECT)"),
            ),
            (
                "GET http://u:p@a.b/ HTTP/1.1\r\n\r\n",
                ProxyHeadError::BadTarget("user information in the URI"),
            ),
            (
                "GET ftp://a.b/ HTTP/1.1\r\n\r\n",
                ProxyHeadError::BadTarget("only http:// URIs (https goes by CONNECT)"),
            ),
            (
                "CONNECT a.b:443 HTTP/1.1\r\nBad Header\r\n\r\n",
                ProxyHeadError::Malformed("not an HTTP/1.x request head"),
            ),
        ] {
            assert_eq!(parse(req.as_bytes()), Err(err), "{req:?}");
        }
        let long = format!("CONNECT {}.com:443 HTTP/1.1\r\n\r\n", "a".repeat(300));
        assert!(parse(long.as_bytes()).is_err());
        let big = format!("CONNECT a.b:443 HTTP/1.1\r\nX: {}", "y".repeat(MAX_PROXY_HEAD));
        assert_eq!(parse(big.as_bytes()), Err(ProxyHeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: 1\r\n")).collect();
        let req = format!("CONNECT a.b:443 HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(req.as_bytes()), Err(ProxyHeadError::TooLarge));
    }
}
