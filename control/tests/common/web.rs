//! The console as a browser speaks to it: curl with the session cookie and the headers htmx
//! sends.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

use super::Daemon;

/// A response: status, headers (lower-cased names) and body.
pub struct Resp {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A request with `headers`, `form` as an urlencoded body (curl encodes each `k=v`).
pub fn http(d: &Daemon, method: &str, path: &str, headers: &[&str], form: &[&str]) -> Resp {
    let cert = d.dir.join("state").join("api.crt");
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "--cacert"]).arg(&cert).args([
        "--resolve",
        &format!("localhost:{}:127.0.0.1", d.port),
        "-X",
        method,
    ]);
    for h in headers {
        c.args(["-H", h]);
    }
    for f in form {
        c.args(["--data-urlencode", f]);
    }
    let out = c.arg(format!("https://localhost:{}{path}", d.port)).output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let code = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp { code, headers, body: body.to_owned() }
}

/// Logs in with `token`: the cookie header to send, and the page's CSRF token.
pub fn login(d: &Daemon, token: &str) -> (String, String) {
    let origin = format!("Origin: https://localhost:{}", d.port);
    let r = http(d, "POST", "/console/login", &[&origin], &[&format!("token={token}")]);
    assert_eq!(r.code, 303, "{}", r.body);
    let set = r.header("set-cookie").unwrap().to_owned();
    assert!(set.starts_with("__Host-sluice_session="), "{set}");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/;"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = format!("Cookie: {}", set.split(';').next().unwrap());
    let page = http(d, "GET", r.header("location").unwrap(), &[&cookie], &[]);
    assert_eq!(page.code, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    (cookie, csrf)
}

/// The CSRF token a page gives htmx (`hx-headers` on its body, HTML-escaped JSON).
pub fn csrf_of(page: &str) -> String {
    let at = page.find("X-CSRF-Token&quot;:&quot;").unwrap() + "X-CSRF-Token&quot;:&quot;".len();
    page[at..].split("&quot;").next().unwrap().to_owned()
}
