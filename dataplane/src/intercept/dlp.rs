//! DLP in the exchange: the rule's profile over request bodies (block, redact, alert) and,
//! when the rule sets `mask_responses`, credentials masked in responses — whole JSON bodies,
//! and server-sent events as they stream ([`sluice_dlp::stream`]).

use sluice_dlp::stream::SseMasker;
use sluice_dlp::{DetectorSet, Scanner};
use sluice_rules::DlpAction;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::block::Refusal;
use super::http1::{Exchange, ProxyError, read_upstream};
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, encode_chunk};
use crate::http::head::{Framing, RequestHead, ResponseHead};
use crate::record::{DlpSummary, RequestRecord};

/// A DLP profile as the exchange applies it.
#[derive(Debug, Clone)]
pub struct Dlp {
    /// Profile name.
    pub profile: String,
    /// Its detectors.
    pub set: DetectorSet,
    /// What a finding triggers.
    pub action: DlpAction,
    /// The shared scanner.
    pub scanner: std::sync::Arc<Scanner>,
    /// Salt of the finding hashes.
    pub salt: std::sync::Arc<[u8]>,
}

/// What DLP decided for one body.
pub(super) enum DlpVerdict {
    /// Forward (the redacted, decoded body when `Some`).
    Forward(Option<Vec<u8>>),
    /// Answer with this refusal.
    Refuse(Refusal),
}

/// Runs the profile over a request body: decoding its Content-Encoding, extracting and
/// scanning; fills the record. `Forward(Some(body))`: a redacted (decoded) body replaces it.
pub(super) fn run_dlp(
    head: &RequestHead,
    body: &[u8],
    ex: &Exchange,
    rec: &mut RequestRecord,
) -> DlpVerdict {
    let Some(dlp) = &ex.dlp else { return DlpVerdict::Forward(None) };
    rec.dlp_profile = Some(dlp.profile.clone());
    if body.is_empty() {
        rec.dlp_action = Some("clean");
        return DlpVerdict::Forward(None);
    }
    let limit = usize::try_from(ex.max_body).unwrap_or(usize::MAX);
    let decoded = match head.header("content-encoding") {
        None => None,
        Some(enc) => match sluice_dlp::body::decode(enc, body, limit) {
            Ok(d) => Some(d),
            Err(e) if ex.fail_open => {
                rec.reason = Some(format!(
                    "body not inspected ({e}): forwarded (on_inspect_failure = allow)"
                ));
                return DlpVerdict::Forward(None);
            }
            Err(e) => {
                return DlpVerdict::Refuse(Refusal {
                    status: 403,
                    code: "inspection_failed",
                    message: format!("the request body could not be inspected: {e}"),
                    rule: ex.rule.clone(),
                });
            }
        },
    };
    let plain = decoded.as_deref().unwrap_or(body);
    let out = sluice_dlp::json::inspect(
        &dlp.scanner,
        &dlp.set,
        sluice_dlp::json::Request {
            content_type: head.header("content-type"),
            body: plain,
            redact: dlp.action == DlpAction::Redact,
            salt: &dlp.salt,
        },
    );
    rec.unscanned.clone_from(&out.unscanned);
    for (detector, count) in out.counts() {
        let mut paths: Vec<String> = Vec::new();
        let mut hashes: Vec<String> = Vec::new();
        for f in out.findings.iter().filter(|f| f.detector == detector) {
            if paths.len() < 16 && !paths.contains(&f.path) {
                paths.push(f.path.clone());
            }
            if hashes.len() < 16 && !hashes.contains(&f.hash) {
                hashes.push(f.hash.clone());
            }
        }
        rec.dlp_findings.push(DlpSummary { detector, count, paths, hashes });
    }
    if out.findings.is_empty() {
        rec.dlp_action = Some("clean");
        return DlpVerdict::Forward(None);
    }
    match dlp.action {
        DlpAction::Block => {
            rec.dlp_action = Some("block");
            let list: Vec<String> =
                out.counts().iter().map(|(d, n)| format!("{d} ({n})")).collect();
            DlpVerdict::Refuse(Refusal {
                status: 403,
                code: "dlp_violation",
                message: format!("sensitive data in the request: {}", list.join(", ")),
                rule: ex.rule.clone(),
            })
        }
        DlpAction::Redact => {
            rec.dlp_action = Some("redact");
            DlpVerdict::Forward(out.redacted)
        }
        DlpAction::Alert => {
            rec.dlp_action = Some("alert");
            DlpVerdict::Forward(None)
        }
    }
}

/// How a response is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MaskPlan {
    /// Server-sent events, masked event by event.
    Sse,
    /// A JSON body, buffered (up to the inspect limit) and masked whole.
    Json,
}

fn header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Whether (and how) this response is masked.
pub(super) fn mask_plan(ex: &Exchange, resp: &ResponseHead) -> Option<MaskPlan> {
    ex.mask.as_ref()?;
    if resp.framing == Framing::Empty || resp.status == 101 {
        return None;
    }
    let ct = header(&resp.headers, "content-type").unwrap_or_default().to_ascii_lowercase();
    let encoded = header(&resp.headers, "content-encoding")
        .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
    if ct.starts_with(b"text/event-stream") && !encoded {
        return Some(MaskPlan::Sse);
    }
    if ct.windows(4).any(|w| w == b"json") {
        return Some(MaskPlan::Json);
    }
    None
}

/// The response head with its framing (and, for a decoded body, its encoding) replaced.
fn rewrite_head(raw: &[u8], resp: &ResponseHead, framing: &str, drop_encoding: bool) -> Vec<u8> {
    let status_line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut out = Vec::with_capacity(raw.len() + 32);
    out.extend_from_slice(status_line.strip_suffix(b"\r").unwrap_or(status_line));
    out.extend_from_slice(b"\r\n");
    for (n, v) in &resp.headers {
        if n == "content-length"
            || n == "transfer-encoding"
            || (drop_encoding && n == "content-encoding")
        {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(framing.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Reads the response body as it arrives, de-framed.
struct BodyReader {
    framing: Framing,
    left: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyReader {
    fn new(framing: Framing) -> Self {
        let left = if let Framing::Length(n) = framing { n } else { 0 };
        BodyReader {
            framing,
            left,
            chunked: ChunkedDecoder::new(),
            done: framing == Framing::Empty || left == 0 && matches!(framing, Framing::Length(_)),
        }
    }

    /// The next piece of body data; `None` at the end.
    async fn next<U: AsyncRead + Unpin>(
        &mut self,
        up: &mut U,
        ubuf: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, ProxyError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if !ubuf.is_empty() {
                match self.framing {
                    Framing::Length(_) => {
                        let take = ubuf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
                        let data: Vec<u8> = ubuf.drain(..take).collect();
                        self.left -= take as u64;
                        self.done = self.left == 0;
                        return Ok(Some(data));
                    }
                    Framing::Chunked => {
                        let mut data = Vec::new();
                        let p = self
                            .chunked
                            .feed(ubuf, &mut data)
                            .map_err(|e| ProxyError::Response(e.to_string()))?;
                        ubuf.drain(..p.consumed);
                        self.done = p.done;
                        if !data.is_empty() || self.done {
                            return Ok(Some(data));
                        }
                    }
                    _ => return Ok(Some(std::mem::take(ubuf))),
                }
            }
            if read_upstream(up, ubuf).await? == 0 {
                return match self.framing {
                    Framing::UntilClose => {
                        self.done = true;
                        Ok(None)
                    }
                    _ => Err(ProxyError::Truncated),
                };
            }
        }
    }
}

/// Relays a response with its credentials masked. Returns whether the connection may carry
/// another request.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_masked<C, U>(
    client: &mut C,
    up: &mut U,
    ubuf: &mut Vec<u8>,
    raw_head: &[u8],
    resp: &ResponseHead,
    plan: MaskPlan,
    ex: &Exchange,
    rec: &mut RequestRecord,
) -> Result<bool, ProxyError>
where
    C: AsyncWrite + Unpin,
    U: AsyncRead + Unpin,
{
    let Some((scanner, set)) = ex.mask.as_ref() else {
        return Err(ProxyError::Response("no mask".into()));
    };
    let mut body = BodyReader::new(resp.framing);
    match plan {
        MaskPlan::Sse => {
            client
                .write_all(&rewrite_head(raw_head, resp, "transfer-encoding: chunked", false))
                .await?;
            client.flush().await?;
            let mut masker = SseMasker::new(scanner, *set);
            let mut out = Vec::new();
            let mut framed = Vec::new();
            while let Some(data) = body.next(up, ubuf).await? {
                rec.bytes_in += data.len() as u64;
                masker.feed(&data, &mut out);
                if !out.is_empty() {
                    framed.clear();
                    encode_chunk(&out, &mut framed);
                    out.clear();
                    client.write_all(&framed).await?;
                    client.flush().await?;
                }
            }
            masker.finish(&mut out);
            framed.clear();
            encode_chunk(&out, &mut framed);
            framed.extend_from_slice(LAST_CHUNK);
            client.write_all(&framed).await?;
            client.flush().await?;
            rec.response_masked.extend(masker.masked.iter().copied());
            Ok(resp.keep_alive)
        }
        MaskPlan::Json => {
            let limit = usize::try_from(ex.max_body).unwrap_or(usize::MAX);
            let mut whole = Vec::new();
            while let Some(data) = body.next(up, ubuf).await? {
                whole.extend_from_slice(&data);
                if whole.len() > limit {
                    break;
                }
            }
            if whole.len() > limit {
                // Too large to hold: the rest streams unmasked (recorded).
                rec.reason = Some("response over the inspection limit: not masked".into());
                client.write_all(&rewrite_head(raw_head, resp, "connection: close", false)).await?;
                client.write_all(&whole).await?;
                while let Some(data) = body.next(up, ubuf).await? {
                    client.write_all(&data).await?;
                }
                client.flush().await?;
                return Ok(false);
            }
            rec.bytes_in = whole.len() as u64;
            let encoding = header(&resp.headers, "content-encoding")
                .filter(|e| !e.eq_ignore_ascii_case(b"identity"));
            let (plain, decoded) = match encoding {
                Some(e) => match sluice_dlp::body::decode(e, &whole, limit) {
                    Ok(d) => (d, true),
                    Err(_) => (whole.clone(), false),
                },
                None => (whole.clone(), false),
            };
            let out = sluice_dlp::json::inspect(
                scanner,
                set,
                sluice_dlp::json::Request {
                    content_type: Some(b"application/json"),
                    body: &plain,
                    redact: true,
                    salt: b"",
                },
            );
            rec.response_masked.extend(out.findings.iter().map(|f| f.detector));
            let (send, drop_enc) = match out.redacted {
                Some(r) => (r, decoded),
                None => (whole, false),
            };
            let length = format!("content-length: {}", send.len());
            client.write_all(&rewrite_head(raw_head, resp, &length, drop_enc)).await?;
            client.write_all(&send).await?;
            client.flush().await?;
            Ok(resp.keep_alive)
        }
    }
}

/// The credential detectors of the registry: what response masking replaces.
pub(super) fn credential_set(scanner: &Scanner) -> DetectorSet {
    let names: Vec<&str> =
        sluice_dlp::DETECTORS.iter().filter(|d| d.family == "credential").map(|d| d.name).collect();
    scanner.profile(&names).unwrap_or_default()
}
