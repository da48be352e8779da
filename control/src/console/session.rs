//! Console sessions: a login with an API token opens one; its id travels in an HttpOnly,
//! Secure, SameSite=Strict cookie named with the `__Host-` prefix (the browser keeps it to
//! this host and path `/`: a sibling subdomain cannot plant one that would be sent first). Control keeps, per session, the
//! token's SHA-256 (never the token), a CSRF token and its times, in memory only (a restart
//! logs everyone out). Every request looks the token's caller up again, so a token removed
//! from the configuration ends its sessions, and checks the role with the API's check.
//! Every change (any method but GET) must carry the session's CSRF token in
//! `X-CSRF-Token`, which the pages give htmx (`hx-headers`), and come from the console's
//! own origin.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::view;
use crate::api::{Needs, lock, permit};
use crate::auth::{Caller, Need, Role};
use crate::state::{AppState, Shared};

/// The cookie naming a session.
const COOKIE: &str = "__Host-sluice_session";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, used or not.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions of one token at once (its oldest ends first), so that logging in again and
/// again with one token never ends the sessions of others.
const MAX_PER_TOKEN: usize = 32;

#[derive(Debug)]
struct Session {
    token: [u8; 32],
    csrf: String,
    opened: Instant,
    seen: Instant,
}

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

fn random_id() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .unwrap_or_else(|_| panic!("the system's random source failed"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Sessions {
    /// Opens a session for the token whose hash is `token`: (its id, its CSRF token).
    fn open(&self, token: [u8; 32]) -> (String, String) {
        let (id, csrf) = (random_id(), random_id());
        let now = Instant::now();
        let mut open = lock!(self.open);
        open.retain(|_, s| alive(s, now));
        let mine = || open.iter().filter(|(_, s)| s.token == token);
        if mine().count() >= MAX_PER_TOKEN
            && let Some(oldest) = mine().min_by_key(|(_, s)| s.opened).map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), Session { token, csrf: csrf.clone(), opened: now, seen: now });
        (id, csrf)
    }

    /// The token hash and CSRF token of live session `id` (its idle time starts again).
    fn get(&self, id: &str) -> Option<([u8; 32], String)> {
        let now = Instant::now();
        let mut open = lock!(self.open);
        match open.get_mut(id) {
            Some(s) if alive(s, now) => {
                s.seen = now;
                Some((s.token, s.csrf.clone()))
            }
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        lock!(self.open).remove(id);
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        lock!(self.open).values().filter(|s| alive(s, now)).count()
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.opened) < LIFETIME
}

/// The session id the request's cookie names.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// A change from another origin is refused: the browser says where a request comes from
/// (`Sec-Fetch-Site`, `Origin`); where it says nothing, the CSRF token decides alone.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) == Some(host)
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A console caller whose session is live and whose role allows `N`. Not logged in: a
/// page is sent to the login (an htmx request is told to go there); a change without the
/// session's CSRF token, or from elsewhere, is refused (403); a role that does not allow
/// it gets a page that says so (403), audited as the API audits it.
#[derive(Debug)]
pub(crate) struct Viewer<N> {
    /// Who is logged in.
    pub caller: Caller,
    /// The session's CSRF token (the pages hand it to htmx).
    pub csrf: String,
    _needs: PhantomData<N>,
}

impl<N> Viewer<N> {
    /// What the page's frame needs: who, and the CSRF token.
    pub(crate) fn chrome<'a>(&'a self, here: &'a str) -> view::Chrome<'a> {
        view::Chrome { caller: &self.caller, csrf: &self.csrf, here }
    }
}

impl<N: Needs> FromRequestParts<Shared> for Viewer<N> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Shared) -> Result<Self, Response> {
        let found = session_id(&parts.headers).and_then(|id| s.console.get(id));
        let caller = found.as_ref().and_then(|(token, _)| s.tokens.by_hash(token));
        let (Some((_, csrf)), Some(caller)) = (found, caller) else {
            return Err(to_login(&parts.headers));
        };
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let sent = parts.headers.get("x-csrf-token").map(HeaderValue::as_bytes);
            if !same_origin(&parts.headers) || !sent.is_some_and(|t| ct_eq(t, csrf.as_bytes())) {
                return Err(view::refusal(
                    StatusCode::FORBIDDEN,
                    "This change did not come from this console's page (CSRF check). Reload \
                     the page and try again.",
                ));
            }
        }
        if let Err(why) = permit(s, &caller, N::NEEDS) {
            return Err(view::refusal(StatusCode::FORBIDDEN, &format!("Refused: {why}.")));
        }
        Ok(Viewer { caller, csrf, _needs: PhantomData })
    }
}

/// To the login page: a redirect, or for htmx (which would swap the login page into a
/// fragment) a 401 that tells it to load the login page instead.
fn to_login(headers: &HeaderMap) -> Response {
    if headers.contains_key("hx-request") {
        return (StatusCode::UNAUTHORIZED, [("hx-redirect", "/console/login")]).into_response();
    }
    Redirect::to("/console/login").into_response()
}

/// The first page a role may see.
fn home(role: Role) -> &'static str {
    if role.allows(Need::Read) {
        "/console/"
    } else if role.allows(Need::Approve) {
        "/console/approvals"
    } else {
        "/console/identities"
    }
}

pub(super) async fn login_page() -> Response {
    view::login(None, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
pub(super) struct Login {
    token: String,
}

pub(super) async fn login(
    State(s): State<Shared>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Login>,
) -> Response {
    if !same_origin(&headers) {
        return view::refusal(StatusCode::FORBIDDEN, "A login must come from this console.");
    }
    let hash: [u8; 32] = Sha256::digest(form.token.trim().as_bytes()).into();
    let Some(caller) = s.tokens.by_hash(&hash).filter(|_| !form.token.trim().is_empty()) else {
        crate::api::audit_failed_login(&s);
        return view::login(Some("That token is not valid."), StatusCode::UNAUTHORIZED);
    };
    let (id, _) = s.console.open(hash);
    audit(&s, &caller, "console.login");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        LIFETIME.as_secs()
    );
    let mut r = Redirect::to(home(caller.role)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(super) async fn logout(
    State(s): State<Shared>,
    headers: HeaderMap,
    v: Viewer<crate::api::needs::Any>,
) -> Response {
    if let Some(id) = session_id(&headers) {
        s.console.close(id);
    }
    audit(&s, &v.caller, "console.logout");
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    let mut r = (StatusCode::OK, [("hx-redirect", "/console/login")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn audit(s: &AppState, caller: &Caller, action: &str) {
    let detail = serde_json::json!({ "role": caller.role.as_str() }).to_string();
    if let Err(e) = lock!(s.rules).audit(&caller.name, action, &detail, None) {
        tracing::error!("writing {action} to the audit log: {e}");
    }
}
