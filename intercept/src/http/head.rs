//! HTTP/1.1 message heads for the interception engine, sans-IO: httparse does the parsing;
//! this module decides the body framing and refuses what smuggling attacks rely on (RFC 9112
//! §6.3 and §11.2): Content-Length with Transfer-Encoding, duplicate or malformed
//! Content-Length, any Transfer-Encoding but a single `chunked`, obs-fold, missing or
//! duplicate Host. Bounded: heads at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields.

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 32 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a head was refused. Each maps to a 400 for requests (502 for responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Larger than [`MAX_HEAD`] or more than [`MAX_HEADERS`] fields.
    #[error("message head too large")]
    TooLarge,
    /// Not HTTP/1.x syntax.
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
    /// A framing ambiguity that request smuggling relies on.
    #[error("ambiguous message framing (request smuggling): {0}")]
    Smuggling(&'static str),
    /// Host missing, repeated or malformed.
    #[error("bad Host header: {0}")]
    BadHost(&'static str),
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method.
    pub method: String,
    /// Request target.
    pub target: String,
    /// Minor version (HTTP/1.0 or 1.1).
    pub minor: u8,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Host without port, lowercased.
    pub host: String,
    /// Body framing.
    pub framing: Framing,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// A WebSocket upgrade request.
    pub websocket: bool,
    /// The connection stays open after this exchange.
    pub keep_alive: bool,
    /// Bytes of the head, including the final CRLF CRLF.
    pub len: usize,
}

impl RequestHead {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// True when the Host names `sni` (case-insensitive, trailing dot ignored): otherwise the
    /// request is domain fronting.
    pub fn host_matches(&self, sni: &str) -> bool {
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        self.host.eq_ignore_ascii_case(sni)
    }
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body framing (given the request method).
    pub framing: Framing,
    /// The connection stays open after this exchange.
    pub keep_alive: bool,
    /// Bytes of the head.
    pub len: usize,
}

fn has_obs_fold(head: &[u8]) -> bool {
    head.windows(3).any(|w| w[0] == b'\r' && w[1] == b'\n' && (w[2] == b' ' || w[2] == b'\t'))
        // a fold right after the request line counts too, and bare-LF heads
        || head.windows(2).any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// Body framing from the header fields: Content-Length and Transfer-Encoding checked strictly.
fn framing(headers: &[(String, Vec<u8>)]) -> Result<Option<Framing>, HeadError> {
    let mut cl: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    for (n, v) in headers {
        match n.as_str() {
            "content-length" => {
                if cl.is_some() {
                    return Err(HeadError::Smuggling("duplicate Content-Length"));
                }
                let v = trim(v);
                if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::Smuggling("Content-Length is not a number"));
                }
                cl = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
            }
            "transfer-encoding" => {
                if te.is_some() {
                    return Err(HeadError::Smuggling("duplicate Transfer-Encoding"));
                }
                te = Some(v);
            }
            _ => {}
        }
    }
    match (cl, te) {
        (Some(_), Some(_)) => {
            Err(HeadError::Smuggling("both Content-Length and Transfer-Encoding"))
        }
        (None, Some(t)) if trim(t).eq_ignore_ascii_case(b"chunked") => Ok(Some(Framing::Chunked)),
        (None, Some(_)) => {
            Err(HeadError::Smuggling("Transfer-Encoding other than a single `chunked`"))
        }
        (Some(n), None) => Ok(Some(Framing::Length(n))),
        (None, None) => Ok(None),
    }
}

fn collect(h: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    h.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect()
}

fn map_err(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
        httparse::Error::Token => HeadError::Malformed("invalid token"),
        httparse::Error::Version => HeadError::Malformed("invalid HTTP version"),
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        // httparse refuses a folded line as a bad header name: name the real reason.
        Err(_) if has_obs_fold(buf) => return Err(HeadError::Smuggling("obs-fold (line folding)")),
        Err(e) => return Err(map_err(e)),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    if has_obs_fold(&buf[..len]) {
        return Err(HeadError::Smuggling("obs-fold (line folding)"));
    }
    let headers = collect(req.headers);
    let minor = req.version.unwrap_or(1);
    let mut hosts = headers.iter().filter(|(n, _)| n == "host");
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => return Err(HeadError::BadHost("missing")),
        (Some(_), Some(_)) => return Err(HeadError::BadHost("repeated")),
        (Some((_, v)), None) => {
            let v = std::str::from_utf8(trim(v)).map_err(|_| HeadError::BadHost("not ASCII"))?;
            let name = match v.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap_or(""),
                None => v
                    .rsplit_once(':')
                    .map_or(v, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { v }),
            };
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
            {
                return Err(HeadError::BadHost("malformed"));
            }
            name.to_ascii_lowercase()
        }
    };
    let framing = framing(&headers)?.unwrap_or(Framing::Empty);
    let connection = headers.iter().filter(|(n, _)| n == "connection").map(|(_, v)| v.as_slice());
    let (mut close, mut keep, mut upgrade) = (false, false, false);
    for c in connection {
        close |= has_token(c, "close");
        keep |= has_token(c, "keep-alive");
        upgrade |= has_token(c, "upgrade");
    }
    let websocket =
        upgrade && headers.iter().any(|(n, v)| n == "upgrade" && has_token(v, "websocket"));
    let expect_continue =
        headers.iter().any(|(n, v)| n == "expect" && trim(v).eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        minor,
        host,
        framing,
        expect_continue,
        websocket,
        keep_alive: if minor == 0 { keep && !close } else { !close },
        headers,
        len,
    }))
}

/// Parses a response head to a request made with `method`. `Ok(None)`: incomplete.
pub fn parse_response(buf: &[u8], method: &str) -> Result<Option<ResponseHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_err(e)),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let headers = collect(resp.headers);
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let no_body = method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let framing =
        if no_body { Framing::Empty } else { framing(&headers)?.unwrap_or(Framing::UntilClose) };
    let close = headers.iter().any(|(n, v)| n == "connection" && has_token(v, "close"));
    let keep = headers.iter().any(|(n, v)| n == "connection" && has_token(v, "keep-alive"));
    Ok(Some(ResponseHead {
        status,
        keep_alive: framing != Framing::UntilClose
            && if minor == 0 { keep && !close } else { !close },
        headers,
        framing,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn plain_post_every_prefix() {
        let text = "POST /v1/chat/completions HTTP/1.1\r\nHost: API.openai.com:443\r\nContent-Type: application/json\r\nContent-Length: 42\r\nExpect: 100-continue\r\n\r\n{body";
        let full = text.find("\r\n\r\n").unwrap() + 4;
        for cut in 0..full {
            assert_eq!(parse_request(&text.as_bytes()[..cut]), Ok(None), "prefix {cut}");
        }
        let h = req(text).unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.host.as_str()),
            ("POST", "/v1/chat/completions", "api.openai.com")
        );
        assert_eq!(
            (h.framing, h.len, h.expect_continue, h.keep_alive),
            (Framing::Length(42), full, true, true)
        );
        assert!(h.host_matches("api.openai.com") && !h.host_matches("evil.example"));
        assert_eq!(h.header("content-type"), Some(&b"application/json"[..]));
    }

    #[test]
    fn smuggling_forms_are_refused() {
        let cases = [
            ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "both"),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", "duplicate Content-Length"),
            ("Content-Length: 5, 5\r\n", "not a number"),
            ("Content-Length: -1\r\n", "not a number"),
            ("Content-Length: +5\r\n", "not a number"),
            ("Transfer-Encoding: chunked, identity\r\n", "single"),
            ("Transfer-Encoding: xchunked\r\n", "single"),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "duplicate Transfer-Encoding",
            ),
            ("X-A: 1\r\n folded: yes\r\n", "obs-fold"),
        ];
        for (fields, why) in cases {
            let text = format!("POST / HTTP/1.1\r\nHost: a.example\r\n{fields}\r\n");
            match req(&text) {
                Err(HeadError::Smuggling(m)) => assert!(m.contains(why), "{fields:?}: {m}"),
                other => panic!("{fields:?}: {other:?}"),
            }
        }
        assert_eq!(req("GET / HTTP/1.1\r\n\r\n"), Err(HeadError::BadHost("missing")));
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HeadError::BadHost("repeated"))
        );
        assert!(matches!(req("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), Err(HeadError::BadHost(_))));
        assert!(matches!(req("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert_eq!(parse_request(&vec![b'a'; MAX_HEAD + 1]), Err(HeadError::TooLarge));
        let mut long = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'x');
        assert_eq!(parse_request(&long), Err(HeadError::TooLarge));
    }

    #[test]
    fn chunked_websocket_and_connection_semantics() {
        let h = req("POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = req("GET /v1/realtime HTTP/1.1\r\nHost: api.openai.com\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(h.websocket && h.keep_alive && h.framing == Framing::Empty);
        let h = req("GET / HTTP/1.0\r\nHost: [2001:db8::1]:443\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.host.as_str(), h.keep_alive), ("2001:db8::1", false));
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n", "POST").unwrap().unwrap();
        assert_eq!((r.status, r.framing, r.keep_alive), (200, Framing::Chunked, true));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD")
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Empty);
        for s in ["204 No Content", "304 Not Modified", "101 Switching Protocols", "100 Continue"] {
            let t = format!("HTTP/1.1 {s}\r\nContent-Length: 10\r\n\r\n");
            assert_eq!(
                parse_response(t.as_bytes(), "GET").unwrap().unwrap().framing,
                Framing::Empty,
                "{s}"
            );
        }
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", "GET").unwrap().unwrap();
        assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET"
            ),
            Err(HeadError::Smuggling(_))
        ));
        assert_eq!(parse_response(b"HTTP/1.1 200 O", "GET"), Ok(None));
    }
}
