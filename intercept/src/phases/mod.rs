//! The per-request policy of an inspected connection, as phases that know no wire format
//! (ARCHITECTURE.md, "Interception phases"; the shape of pingora's `ProxyHttp`). The
//! HTTP/1.1 driver ([`crate::h1`]) calls them for each message; other framings call the same
//! phases in the same order:
//!
//! 1. [`Session::request`] opens the request's context (its record) from the head;
//! 2. [`Session::request_filter`]: refusals that need only the head (a refused connection,
//!    domain fronting, organization and project);
//! 3. [`Session::request_body_filter`]: the body decoded once (Content-Encoding), the model read
//!    from wherever the endpoint carries it and checked, DLP (block, redact, alert);
//!    then, for a request the rule holds, [`Session::hold`] waits for a reviewer's decision
//!    ([`crate::approval`]: the one phase that awaits);
//! 4. [`Session::upstream_request_filter`]: the headers the rule injects;
//! 5. [`Session::response_filter`]: the status, and whether the response is masked;
//! 6. response body: [`crate::mask`] (credentials masked, server-sent events event by event);
//! 7. [`Session::logging`]: the finished record, for the [`crate::RecordSink`].
//!
//! Pure: no sockets, no clocks but the request's start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use sluice_dlp::{DetectorSet, Scanner};
use sluice_rules::HeaderPolicy;

use crate::block::{self, Refusal};
use crate::dlp::{self, Dlp};
use crate::mask::{self, MaskPlan};
use crate::model::{ModelError, model_of};
use crate::record::RequestRecord;
use crate::usage::Tail;

mod apps;
mod body;
mod messages;

pub use apps::{AppContext, PerRequest};
pub use messages::{MessageVerdict, event_model, event_type};

/// Header the rule injects toward ChatGPT (comma-separated workspace UUIDs).
pub const WORKSPACE_HEADER: &str = "chatgpt-allowed-workspace-id";
/// Header the rule injects toward the OpenAI API (allowed organization ids).
pub const ORGS_HEADER: &str = "openai-allowed-organization-ids";
/// Headers only the engine sets: a client's copies never go upstream.
pub const INJECTED: [&str; 2] = [WORKSPACE_HEADER, ORGS_HEADER];

/// The client side's HTTP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    H2,
}

impl HttpVersion {
    /// As records name it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
            HttpVersion::H2 => "2",
        }
    }
}

/// Header lookup, whatever the framing keeps them in.
pub trait Headers: Sync {
    /// The first value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// How many fields named `name` (lowercase) there are.
    fn count(&self, name: &str) -> usize;
    /// Calls `f(name, value)` for every field, in order (names lowercase).
    fn each(&self, f: &mut dyn FnMut(&str, &[u8]));
}

/// Headers the phases read whose repetition would let the server read another value than
/// the one inspected (which copy wins differs between implementations): refused.
const SINGLE: [&str; 7] = [
    "content-type",
    "content-encoding",
    "authorization",
    "api-key",
    "openai-organization",
    "openai-project",
    "chatgpt-account-id",
];

/// A request head as the phases see it.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a str,
    /// Request target: path and query.
    pub target: &'a str,
    /// Host (HTTP/1.1 `Host`, HTTP/2 `:authority`) without port, lowercased.
    pub authority: &'a str,
    /// Client side's version.
    pub version: HttpVersion,
    /// Its header fields.
    pub headers: &'a dyn Headers,
}

impl RequestView<'_> {
    fn text(&self, name: &str) -> Option<String> {
        self.headers
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim().chars().take(200).collect())
    }
}

/// Response masking: the scanner and the credential detectors it replaces.
#[derive(Debug, Clone)]
pub struct Mask {
    /// The policy's scanner.
    pub scanner: Arc<Scanner>,
    /// The detectors replaced.
    pub set: DetectorSet,
}

/// What every request of one inspected connection shares: who, where, and the rule's policy.
#[derive(Debug, Clone)]
pub struct Session {
    /// SNI of the connection (the request's authority must match it).
    pub sni: String,
    /// Client address.
    pub client: SocketAddr,
    /// Original destination.
    pub original_dst: SocketAddr,
    /// Identity name.
    pub identity: String,
    /// Feed user.
    pub user: Option<String>,
    /// Category of the SNI.
    pub category: Option<String>,
    /// Rule that decided.
    pub rule: Option<String>,
    /// Header policy of the rule.
    pub headers: HeaderPolicy,
    /// Largest request body buffered for inspection.
    pub max_body: u64,
    /// `on_inspect_failure = "allow"`: a body over the limit is forwarded uninspected.
    pub fail_open: bool,
    /// Every request of the connection is refused with this (block rule, invalid upstream
    /// certificate, unreachable upstream).
    pub refuse: Option<Refusal>,
    /// The rule's DLP profile, if any.
    pub dlp: Option<Dlp>,
    /// Credentials in responses are masked (`mask_responses`).
    pub mask: Option<Mask>,
    /// The access state: brokered keys and virtual keys, quota counts (read per request).
    pub access: Arc<crate::access::Access>,
    /// The rule records its exchanges (sealed to the customer's keys).
    pub recorder: Option<crate::recording::Recorder>,
    /// The app catalog, what the hello showed, and the policy requests are decided with.
    pub apps: AppContext,
}

/// One request's context: its record as it is filled, and how a refusal is worded.
#[derive(Debug)]
pub struct RequestCtx {
    /// The record.
    pub rec: RequestRecord,
    /// The client reads HTML (a browser): refusals are pages.
    pub html: bool,
    /// The `Sec-WebSocket-Extensions` a server's 101 accepted.
    pub ws_extensions: Option<Vec<u8>>,
    /// The brokered key's header, taken by phase 2 for phase 4 (never recorded).
    pub(crate) brokered: Option<(&'static str, String)>,
    /// The WebSocket subprotocols offered, without keys (brokered rules).
    pub(crate) ws_protocols: Option<String>,
    /// The response body's end, for its token usage (JSON and event streams).
    usage: Option<Tail>,
    /// What a reviewer must decide before the request goes on (set by phase 3).
    pub(crate) hold: Option<sluice_link::HoldTicket>,
    /// The request's app and operation (set by phase 1).
    pub(crate) seen: Option<apps::Seen>,
    /// An answer listing the user's ChatGPT accounts, as it passes (set by phase 5).
    listing: Option<apps::Listing>,
    started: Instant,
}

impl RequestCtx {
    /// The next de-framed bytes of the response body (the drivers call it as they relay).
    pub fn observe(&mut self, bytes: &[u8]) {
        if let Some(t) = self.usage.as_mut() {
            t.feed(bytes);
        }
        if let Some(l) = self.listing.as_mut() {
            l.feed(bytes);
        }
        if let Some(c) = self.rec.capture.as_mut() {
            c.response_body(bytes);
        }
    }
}

/// What goes upstream after the body filter.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// The body (the client's bytes, or the redacted, decoded body).
    pub body: Vec<u8>,
    /// The body was replaced by its decoded form: its Content-Encoding is dropped.
    pub decoded: bool,
}

impl Session {
    /// Phase 1: the request's context, its record filled from the head.
    pub fn request(&self, req: Option<&RequestView<'_>>) -> RequestCtx {
        let now = crate::record::now_ms();
        let text = |n: &str| req.and_then(|r| r.text(n));
        let key = req.and_then(|r| crate::broker::presented(r.headers)).map(|(_, k)| k);
        let mut rec = RequestRecord {
            kind: "request",
            ts_ms: now,
            identity: Some(self.identity.clone()),
            user: self.user.clone(),
            src: self.client.ip().to_string(),
            sport: self.client.port(),
            dst: self.original_dst.ip().to_string(),
            sni: Some(self.sni.clone()),
            http_version: req.map_or("1.1", |r| r.version.as_str()),
            method: req.map(|r| r.method.to_owned()).unwrap_or_default(),
            path: req
                .map(|r| {
                    r.target.split(['?', '#']).next().unwrap_or("").chars().take(512).collect()
                })
                .unwrap_or_default(),
            api_key_fp: key.filter(|k| !k.is_empty()).map(key_fingerprint),
            openai_organization: text("openai-organization"),
            openai_project: text("openai-project"),
            user_agent: text("user-agent"),
            category: self.category.clone(),
            rule: self.rule.clone(),
            verdict: "allow",
            ..RequestRecord::default()
        };
        if let Some(r) = req {
            self.note_credential(r, &mut rec);
        }
        if let (Some(rc), Some(r)) = (&self.recorder, req) {
            let response = rc.mode == sluice_rules::RecordMode::RequestResponse;
            let mut capture =
                crate::recording::Capture::new(r.method, r.target, r.headers, response);
            capture.hello_app = Some(self.apps.catalog.shared_name_or_unknown(self.apps.hello.app));
            rec.capture = Some(Box::new(capture));
        }
        let html = block::wants_html(req.and_then(|r| r.headers.header("accept")));
        let mut ctx = RequestCtx {
            rec,
            html,
            ws_extensions: None,
            brokered: None,
            ws_protocols: None,
            usage: None,
            hold: None,
            seen: None,
            listing: None,
            started: Instant::now(),
        };
        if let Some(r) = req {
            self.identify(r, &mut ctx);
        }
        ctx
    }

    /// Phase 2: what the head alone decides. A refusal answers this request (the driver
    /// drains its body first, so the client can read the answer).
    pub fn request_filter(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        if let Some(r) = &self.refuse {
            return Err(r.clone());
        }
        if req.method.eq_ignore_ascii_case("CONNECT") {
            // A tunnel inside the inspected connection would not be inspected.
            return Err(Refusal {
                status: 405,
                code: "connect_not_inspected",
                message: "CONNECT inside an inspected connection is not allowed".into(),
                rule: self.rule.clone(),
                retry_after: None,
            });
        }
        if let Some(name) = SINGLE.iter().find(|n| req.headers.count(n) > 1) {
            return Err(Refusal {
                status: 400,
                code: "ambiguous_request",
                message: format!("the request repeats the {name} header"),
                rule: self.rule.clone(),
                retry_after: None,
            });
        }
        self.broker_filter(req, ctx)?;
        let sni = self.sni.strip_suffix('.').unwrap_or(&self.sni);
        if !req.authority.eq_ignore_ascii_case(sni) {
            return Err(Refusal::forbidden(
                "domain_fronting",
                format!("the Host header does not name the TLS server name {}", self.sni),
                self.rule.as_deref(),
            ));
        }
        self.app_filter(req, ctx)?;
        let h = &self.headers;
        let rule = self.rule.as_deref();
        let text = |n: &str| {
            req.headers.header(n).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
        };
        if h.block_chatgpt_anonymous
            && chatgpt_host(req.authority)
            && req.target.starts_with("/backend-anon/")
        {
            return Err(Refusal::forbidden(
                "chatgpt_signed_out",
                "ChatGPT may be used here only signed in to an allowed workspace",
                rule,
            ));
        }
        // An allow-list holds whether or not the client names its organization (project):
        // without the header, the key's default one is used, which could be any.
        let checks = [
            (
                "openai-organization",
                &h.allowed_organizations,
                "organization",
                ("organization_not_allowed", "organization_required"),
            ),
            (
                "openai-project",
                &h.allowed_projects,
                "project",
                ("project_not_allowed", "project_required"),
            ),
        ];
        for (header, allowed, what, (not_allowed, required)) in checks {
            if allowed.is_empty() {
                continue;
            }
            match (req.headers.header(header).is_some(), text(header)) {
                (_, Some(v)) if allowed.iter().any(|a| a == v) => {}
                // Present (not UTF-8 counts as present) and not allowed.
                (true, _) => {
                    return Err(Refusal::forbidden(
                        not_allowed,
                        format!("this OpenAI {what} is not allowed"),
                        rule,
                    ));
                }
                (false, _) if h.inject_missing_org_project => {}
                (false, _) => {
                    return Err(Refusal::forbidden(
                        required,
                        format!(
                            "requests must name an allowed OpenAI {what} (the {header} header)"
                        ),
                        rule,
                    ));
                }
            }
        }
        // Last: only a request that passed every other check is counted.
        self.quota_filter(ctx)
    }

    /// Phase 4: the headers the rule injects toward the server, each noted in the record, and
    /// the brokered key.
    /// The driver drops the client's copies of [`INJECTED`] headers and of every header
    /// returned.
    pub fn upstream_request_filter(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Vec<(&'static str, String)> {
        let host = req.authority;
        let mut out = Vec::new();
        if let (true, Some(v)) = (chatgpt_host(host), &self.headers.chatgpt_workspace_header) {
            out.push((WORKSPACE_HEADER, v.clone()));
        }
        if let (true, Some(v)) =
            (host == "api.openai.com", &self.headers.openai_allowed_orgs_header)
        {
            out.push((ORGS_HEADER, v.clone()));
        }
        // A masked response is read as it streams, and a model's answer for its token usage:
        // asked for without compression (a server that compresses anyway has a masked body
        // decoded and masked whole, and its usage unread).
        let answer = (req.method.eq_ignore_ascii_case("POST") && req.target.starts_with("/v1/"))
            || ctx.seen.is_some_and(|s| s.lists_accounts);
        if (self.mask.is_some() || answer) && req.headers.header("accept-encoding").is_some() {
            out.push(("accept-encoding", "identity".to_owned()));
        }
        // The request filter let a request without its organization (project) through only
        // to have the first allowed value sent.
        if self.headers.inject_missing_org_project {
            let missing = [
                ("openai-organization", &self.headers.allowed_organizations),
                ("openai-project", &self.headers.allowed_projects),
            ];
            for (name, allowed) in missing {
                if let (None, Some(first)) = (req.headers.header(name), allowed.first()) {
                    out.push((name, first.clone()));
                }
            }
        }
        ctx.rec.injected.extend(out.iter().map(|(n, _)| *n));
        // The brokered key replaces the client's credential (not listed in `injected`: the
        // record names the key in `broker_key`).
        out.extend(self.broker_headers(ctx));
        out
    }

    /// Phase 5: the final response head; says whether (and how) its body is masked.
    pub fn response_filter(
        &self,
        status: u16,
        headers: &dyn Headers,
        has_body: bool,
        ctx: &mut RequestCtx,
    ) -> Option<MaskPlan> {
        ctx.rec.status = Some(status);
        if let Some(c) = ctx.rec.capture.as_mut() {
            c.response_head(status, headers.header("content-type"));
        }
        if status == 101 {
            ctx.ws_extensions = headers.header("sec-websocket-extensions").map(<[u8]>::to_vec);
        }
        // A model's answer says what it used at its end (an encoded body's end cannot be read).
        let readable = |ct: &[u8]| {
            let ct = ct.to_ascii_lowercase();
            ct.windows(4).any(|w| w == b"json") || ct.starts_with(b"text/event-stream")
        };
        let encoded = headers
            .header("content-encoding")
            .is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity"));
        let json = has_body && !encoded && headers.header("content-type").is_some_and(readable);
        if json && (200..300).contains(&status) {
            ctx.usage = Some(Tail::default());
        }
        ctx.listing = self.watch_listing(status, json, ctx);
        let m = self.mask.as_ref()?;
        if !has_body || status == 101 {
            return None;
        }
        mask::plan(m, headers)
    }

    /// A refusal answered in place of the server: fills the record.
    pub fn refused(&self, r: &Refusal, ctx: &mut RequestCtx) {
        self.refused_record(r, &mut ctx.rec);
    }

    /// [`Session::refused`] for a record without its context (a WebSocket message's).
    pub fn refused_record(&self, r: &Refusal, rec: &mut RequestRecord) {
        rec.status = Some(r.status);
        rec.verdict = "block";
        rec.code = Some(r.code);
        rec.reason = Some(r.message.clone());
        if rec.rule.is_none() {
            rec.rule.clone_from(&r.rule);
        }
    }

    /// Phase 7: the finished record.
    pub fn logging(&self, mut ctx: RequestCtx) -> RequestRecord {
        ctx.rec.latency_ms = ctx.started.elapsed().as_millis() as u64;
        if let Some(u) = ctx.usage.as_ref().and_then(Tail::usage) {
            ctx.rec.input_tokens = Some(u.input_tokens);
            ctx.rec.output_tokens = Some(u.output_tokens);
            ctx.rec.cached_tokens = Some(u.cached_tokens);
        }
        if let Some(l) = ctx.listing.take() {
            ctx.rec.chatgpt_accounts_listed = l.accounts();
        }
        self.charge_quota(&ctx.rec);
        if let Some(r) = &self.recorder {
            crate::recording::hand_over(r, &self.access, &mut ctx.rec);
        }
        ctx.rec
    }
}

/// Whether a host serves ChatGPT (its workspace header and signed-out paths apply there).
fn chatgpt_host(host: &str) -> bool {
    matches!(host, "chatgpt.com" | "chat.openai.com" | "chat.com")
        || host.ends_with(".chatgpt.com")
        || host.ends_with(".chat.openai.com")
}

/// The fingerprint of an API key: `sha256:` and the first 12 hex digits of its SHA-256.
pub fn key_fingerprint(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(key.as_bytes());
    let mut s = String::with_capacity(19);
    s.push_str("sha256:");
    for b in &d[..6] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}
