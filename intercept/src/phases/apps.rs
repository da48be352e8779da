//! Which app a request comes from, what it does, and which ChatGPT account it works with
//! (ARCHITECTURE.md, "Apps and discovery"); and the decision again per request where the
//! policy has rules only requests can tell (apps, operations).
//!
//! A request is decided again only to be refused: the rule that took the connection keeps
//! its settings (DLP profile, masking, recording) for every request on it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_rules::apps::{AppCatalog, AppId, HeaderSource, HelloMatch, RequestFacts};
use sluice_rules::operation::{Operation, classify, normal_path};
use sluice_rules::{Action, AppSeen, IdentityOverlay, Policy, Query};

use super::{Headers, RequestCtx, RequestView, Session, chatgpt_host};
use crate::block::Refusal;

/// Longest account id kept.
const MAX_ACCOUNT: usize = 64;
/// Longest answer listing a user's accounts that is read (longer ones are not).
const MAX_LISTING: usize = 256 * 1024;
/// Accounts kept from one listing.
const MAX_LISTED: usize = 16;

/// What a connection's requests are identified and decided with.
#[derive(Debug, Clone)]
pub struct AppContext {
    /// The app catalog.
    pub catalog: Arc<AppCatalog>,
    /// What the connection's hello showed.
    pub hello: HelloMatch,
    /// The policy to decide each request with, when it has rules only requests can tell.
    pub per_request: Option<PerRequest>,
}

impl Default for AppContext {
    /// The shipped catalog, an unknown hello, no per-request decisions.
    fn default() -> Self {
        AppContext {
            catalog: sluice_rules::apps::shipped().clone(),
            hello: HelloMatch::default(),
            per_request: None,
        }
    }
}

/// Deciding requests again: the connection's policy snapshot and who the client is.
#[derive(Debug, Clone)]
pub struct PerRequest {
    /// The policy the connection was decided with.
    pub policy: Arc<Policy>,
    /// The identity feed (read at each request).
    pub overlay: Arc<ArcSwap<IdentityOverlay>>,
    /// The client's MAC.
    pub mac: [u8; 6],
    /// The server port.
    pub port: u16,
}

/// What phase 1 learned about the request's app and operation (for phases 2 to 5).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub app: Option<AppId>,
    pub op: Operation,
    /// It asks ChatGPT for the user's accounts (its answer is asked uncompressed and read).
    pub lists_accounts: bool,
}

struct Source<'a>(&'a dyn Headers);

impl HeaderSource for Source<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.header(name)
    }
}

/// A request to ChatGPT that works with an account: its back end's API, but signing in.
fn uses_account(path: &str, op: Operation) -> bool {
    let path = normal_path(path);
    op != Operation::Login
        && ["/backend-api/", "/backend-anon/", "/public-api/"].iter().any(|p| path.starts_with(p))
}

/// The account id a header carries, if it is a plain token.
fn account_of(v: &[u8]) -> Option<String> {
    let v = v.trim_ascii();
    (!v.is_empty()
        && v.len() <= MAX_ACCOUNT
        && v.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then(|| String::from_utf8_lossy(v).to_ascii_lowercase())
}

/// Whether a request to `host` asks ChatGPT for the signed-in user's accounts
/// (`/backend-api/accounts/check/…`, which the web and desktop apps call as they start): its
/// answer shows the workspaces and personal account behind the session.
pub(crate) fn lists_accounts(host: &str, target: &str) -> bool {
    chatgpt_host(host)
        && normal_path(target.split(['?', '#']).next().unwrap_or(""))
            .starts_with("/backend-api/accounts/check")
}

/// Such an answer, as it passes (bounded).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    buf: Vec<u8>,
    cut: bool,
}

impl Listing {
    /// The next bytes of the body.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.cut {
            return;
        }
        if self.buf.len() + bytes.len() > MAX_LISTING {
            self.cut = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The accounts it listed (none for an answer too long to read).
    pub(crate) fn accounts(&self) -> Vec<String> {
        if self.cut { Vec::new() } else { listed_accounts(&self.buf) }
    }
}

/// The accounts a ChatGPT answer lists (`{"accounts": {KEY: {"account": {"account_id",
/// "structure"}}}}`), each `workspace:ID`, `personal:ID` or `account:ID`; ids as the
/// `chatgpt-account-id` header carries them (plain tokens, lowercased), at most 16, sorted.
pub(crate) fn listed_accounts(body: &[u8]) -> Vec<String> {
    use serde_json::Value;
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let Some(map) = v.get("accounts").and_then(Value::as_object) else { return Vec::new() };
    let mut out: Vec<String> = Vec::new();
    for (key, entry) in map {
        let a = &entry["account"];
        // (`default` repeats one of the others; its key is no id.)
        let id = match a.get("account_id").and_then(Value::as_str) {
            Some(id) => id,
            None if key != "default" => key,
            None => continue,
        };
        let Some(id) = account_of(id.as_bytes()) else { continue };
        let structure = match a.get("structure").and_then(Value::as_str) {
            Some("workspace") => "workspace",
            Some("personal") => "personal",
            _ => "account",
        };
        let listed = format!("{structure}:{id}");
        if out.len() < MAX_LISTED && !out.contains(&listed) {
            out.push(listed);
        }
    }
    out.sort_unstable();
    out
}

impl Session {
    /// Phase 5's part: an answer listing the user's ChatGPT accounts is read as it passes.
    pub(crate) fn watch_listing(
        &self,
        status: u16,
        readable: bool,
        ctx: &RequestCtx,
    ) -> Option<Listing> {
        ((200..300).contains(&status) && readable && ctx.seen.is_some_and(|s| s.lists_accounts))
            .then(Listing::default)
    }

    /// Phase 1's part: the app (hello and headers), the operation, the ChatGPT account.
    pub(crate) fn identify(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) {
        let a = &self.apps;
        let path = req.target.split(['?', '#']).next().unwrap_or("");
        let facts = RequestFacts { authority: req.authority, path, headers: &Source(req.headers) };
        let id = a.catalog.identify(a.hello, a.catalog.by_request(&facts));
        let op = classify(req.method, path);
        let rec = &mut ctx.rec;
        rec.app = Some(a.catalog.shared_name_or_unknown(id.app));
        rec.app_version = id.version;
        rec.app_evidence = (!id.evidence.is_empty()).then(|| id.evidence.as_str());
        rec.app_claimed = id.claimed.and_then(|c| a.catalog.shared_name(c)).cloned();
        rec.operation = Some(op.as_str());
        if chatgpt_host(req.authority) {
            rec.chatgpt_account = match req.headers.header("chatgpt-account-id") {
                Some(v) => Some(account_of(v).unwrap_or_else(|| "(unreadable)".to_owned())),
                None if path.starts_with("/backend-anon/") => Some("anonymous".to_owned()),
                None => None,
            };
        }
        ctx.seen =
            Some(Seen { app: id.app, op, lists_accounts: lists_accounts(req.authority, path) });
    }

    /// Phase 2's part: the request decided again, then the ChatGPT account allow-list of
    /// the rule that decided it (the connection's, when the policy decides no request).
    pub(crate) fn app_filter(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let Some(seen) = ctx.seen else { return Ok(()) };
        let decided = self.redecide(seen, ctx)?;
        let allowed = decided.as_deref().unwrap_or(&self.headers.chatgpt_accounts);
        if allowed.is_empty() || !chatgpt_host(req.authority) || !uses_account(req.target, seen.op)
        {
            return Ok(());
        }
        let rule = self.rule.as_deref();
        match ctx.rec.chatgpt_account.as_deref() {
            Some(a) if allowed.iter().any(|x| x.eq_ignore_ascii_case(a)) => Ok(()),
            Some("anonymous") | None => Err(Refusal::forbidden(
                "chatgpt_account_required",
                "ChatGPT may be used here only with an allowed company account",
                rule,
            )),
            Some(a) => Err(Refusal::forbidden(
                "chatgpt_account_not_allowed",
                format!(
                    "the ChatGPT account {a} is not an allowed company account (a personal account?): sign in to the company workspace"
                ),
                rule,
            )),
        }
    }

    /// Phase 3's part: a chat whose body carries a file (or an image as data) is an upload,
    /// one calling an MCP server a connector call; decided again when it changes.
    pub(crate) fn body_operation(&self, body: &[u8], ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let Some(mut seen) = ctx.seen else { return Ok(()) };
        if seen.op != Operation::Chat {
            return Ok(());
        }
        let mut shape = shape_of(body);
        // Keys and values may be written with escapes (`"input\u005ffile"`) that the byte
        // search does not see; where requests are decided by what they do, such a body is
        // read as JSON.
        if shape.is_none()
            && self.apps.per_request.is_some()
            && memchr::memmem::find(body, b"\\u").is_some()
        {
            shape =
                serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| walk(&v, 0));
        }
        let Some(op) = shape else { return Ok(()) };
        seen.op = op;
        ctx.seen = Some(seen);
        ctx.rec.operation = Some(op.as_str());
        self.redecide(seen, ctx).map(|_| ())
    }

    /// The request decided with what it shows: refused when the answer is to block.
    /// Otherwise the ChatGPT accounts of the rule whose settings it takes (`None`: the policy
    /// decides no request).
    fn redecide(&self, seen: Seen, ctx: &mut RequestCtx) -> Result<Option<Vec<String>>, Refusal> {
        let Some(p) = &self.apps.per_request else { return Ok(None) };
        let overlay = p.overlay.load();
        let q = Query {
            src: self.client.ip(),
            mac: Some(p.mac),
            sni: Some(&self.sni),
            port: p.port,
            now: crate::record::now_ms() / 1000,
            app: AppSeen::Request { app: seen.app, hello: self.apps.hello.app },
            op: Some(seen.op),
        };
        let d = p.policy.decide(&q, &overlay);
        if d.action != Action::Block {
            // (Usually empty: no allocation.)
            return Ok(Some(
                d.settings.map(|r| r.spec.headers.chatgpt_accounts.clone()).unwrap_or_default(),
            ));
        }
        let rule = d.rule_name();
        ctx.rec.rule = Some(rule.to_owned());
        Err(Refusal::forbidden(
            "blocked_by_policy",
            format!(
                "{} by {} is not allowed for {}",
                seen.op.as_str(),
                self.apps.catalog.name(seen.app),
                self.identity
            ),
            Some(rule),
        ))
    }
}

/// What a chat body's shape makes it, read as bytes: a file or an inline image is an upload,
/// an MCP tool a connector call.
fn shape_of(body: &[u8]) -> Option<Operation> {
    if FILE_PARTS.iter().any(|f| f.find(body).is_some()) {
        Some(Operation::Upload)
    } else if MCP.find(body).is_some() {
        Some(Operation::Connector)
    } else {
        None
    }
}

/// [`shape_of`] over a parsed body (escapes read), to a bounded depth.
fn walk(v: &serde_json::Value, depth: usize) -> Option<Operation> {
    use serde_json::Value;
    if depth > 32 {
        return None;
    }
    let mut found = None;
    let mut note = |op: Option<Operation>| match op {
        // An upload outranks a connector call.
        Some(Operation::Upload) => Some(Operation::Upload),
        other => {
            found = found.or(other);
            None
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let op = match (k.as_str(), x) {
                    ("file_data", _) => Some(Operation::Upload),
                    ("type", Value::String(t)) if t == "input_file" => Some(Operation::Upload),
                    ("type", Value::String(t)) if t == "mcp" => Some(Operation::Connector),
                    (_, Value::String(t)) if t.starts_with("data:image/") => {
                        Some(Operation::Upload)
                    }
                    _ => walk(x, depth + 1),
                };
                if let Some(up) = note(op) {
                    return Some(up);
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                if let Some(up) = note(walk(x, depth + 1)) {
                    return Some(up);
                }
            }
        }
        _ => {}
    }
    found
}

/// A file inside a prompt: the Responses API's `input_file` parts, the inline `file_data` of
/// those and of chat completions' `file` parts, and images sent as data URLs. (Quoted: the same words inside
/// a prompt's text are escaped, `\"file_data\"`, and do not match.)
static FILE_PARTS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 3]> =
    std::sync::LazyLock::new(|| {
        [
            memchr::memmem::Finder::new(b"\"input_file\""),
            memchr::memmem::Finder::new(b"\"file_data\""),
            // An image sent as data (a data URL string), not a link.
            memchr::memmem::Finder::new(b"\"data:image/"),
        ]
    });

/// A remote MCP server as a tool (`"type": "mcp"`).
static MCP: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"mcp\""));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_accounts_are_read_bounded_and_plain() {
        let body = br#"{"accounts":{"default":{"account":{"account_id":"P-1","structure":"personal"}},"P-1":{"account":{"account_id":"P-1","structure":"personal"}},"w-2":{"account":{"structure":"workspace"}},"x":{"account":{"account_id":"bad id\u0000","structure":"workspace"}},"y":{"account":{"account_id":"y-3","structure":"team?"}},"default2":[]}}"#;
        assert_eq!(
            listed_accounts(body),
            ["account:default2", "account:y-3", "personal:p-1", "workspace:w-2"]
        );
        // Not JSON, not the shape, a list too long: nothing, no panic.
        for bad in [&b"{"[..], b"[]", b"{\"accounts\":[1]}", b"{\"accounts\":{\"a\":5}}"] {
            let got = listed_accounts(bad);
            assert!(got.is_empty() || got == ["account:a"], "{got:?}");
        }
        let many: String = (0..40)
            .map(|i| format!("\"a{i}\":{{\"account\":{{\"account_id\":\"a{i}\"}}}}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            listed_accounts(format!("{{\"accounts\":{{{many}}}}}").as_bytes()).len(),
            MAX_LISTED
        );
        let mut l = Listing::default();
        l.feed(&body[..10]);
        l.feed(&body[10..]);
        assert_eq!(l.accounts().len(), 4);
        l.feed(&vec![b' '; MAX_LISTING]);
        assert!(l.accounts().is_empty(), "an answer too long is not read");
    }

    #[test]
    fn only_the_accounts_call_of_chatgpt_lists_accounts() {
        assert!(lists_accounts("chatgpt.com", "/backend-api/accounts/check/v4-2023-04-27?x=1"));
        assert!(lists_accounts("chatgpt.com", "/backend-api//Accounts/check"));
        assert!(!lists_accounts("api.openai.com", "/backend-api/accounts/check"));
        assert!(!lists_accounts("chatgpt.com", "/backend-api/conversations"));
    }
}
