//! Credential formats: prefixed tokens described by a table (prefix, charset, length), and the
//! formats that need their own check (JWTs, PEM blocks, connection strings, keyword-anchored
//! secrets, emails, SendGrid, Azure client secrets, Telegram). Every check is bounded and
//! looks only at the bytes around its anchor.

use super::{DetectorSet, Match};

/// Characters a token body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cs {
    /// `[A-Za-z0-9]`
    Alnum,
    /// `[A-Za-z0-9_-]` (base64url and friends)
    Url,
    /// `[A-Za-z0-9_]`
    Word,
    /// `[0-9a-f]`
    HexLower,
    /// `[A-Z2-7]` (base32)
    Base32,
    /// `[A-Za-z0-9+/=]`
    Base64,
    /// `[A-Z0-9]`
    UpperAlnum,
    /// `[a-f0-9-]`
    HexDash,
    /// `[A-Za-z0-9/_]` (webhook paths)
    Path,
    /// bech32 upper case
    Bech32Upper,
}

impl Cs {
    fn has(self, b: u8) -> bool {
        match self {
            Cs::Alnum => b.is_ascii_alphanumeric(),
            Cs::Url => b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
            Cs::Word => b.is_ascii_alphanumeric() || b == b'_',
            Cs::HexLower => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            Cs::Base32 => b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b),
            Cs::Base64 => b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=',
            Cs::UpperAlnum => b.is_ascii_uppercase() || b.is_ascii_digit(),
            Cs::HexDash => b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-',
            Cs::Path => b.is_ascii_alphanumeric() || b == b'/' || b == b'_',
            Cs::Bech32Upper => b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L".contains(&b),
        }
    }
}

/// A prefixed token format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub(crate) name: &'static str,
    pub(crate) prefixes: &'static [&'static str],
    cs: Cs,
    min: usize,
    max: usize,
    /// The prefix must appear with exactly this case.
    exact_case: bool,
}

const fn t(
    name: &'static str,
    prefixes: &'static [&'static str],
    cs: Cs,
    min: usize,
    max: usize,
) -> Token {
    Token { name, prefixes, cs, min, max, exact_case: true }
}

/// The prefixed formats (lengths are of the body after the prefix).
pub(crate) const TOKENS: &[Token] = &[
    t("aws_access_key_id", &["AKIA", "ASIA", "ABIA", "ACCA"], Cs::Base32, 16, 16),
    t("openai_api_key", &["sk-proj-", "sk-svcacct-", "sk-None-", "sk-"], Cs::Url, 20, 250),
    t("openai_admin_key", &["sk-admin-"], Cs::Url, 20, 250),
    t("anthropic_api_key", &["sk-ant-api"], Cs::Url, 40, 250),
    t("anthropic_admin_key", &["sk-ant-admin"], Cs::Url, 40, 250),
    t("google_api_key", &["AIza"], Cs::Url, 35, 35),
    t("google_oauth_secret", &["GOCSPX-"], Cs::Url, 28, 28),
    t("google_oauth_token", &["ya29."], Cs::Url, 30, 2048),
    t("azure_storage_key", &["AccountKey="], Cs::Base64, 86, 88),
    t("github_token", &["ghp_"], Cs::Alnum, 36, 36),
    t("github_oauth_token", &["gho_"], Cs::Alnum, 36, 36),
    t("github_app_token", &["ghu_", "ghs_"], Cs::Alnum, 36, 36),
    t("github_refresh_token", &["ghr_"], Cs::Alnum, 36, 76),
    t("github_fine_grained_pat", &["github_pat_"], Cs::Word, 70, 100),
    t("gitlab_token", &["glpat-"], Cs::Url, 20, 64),
    t("gitlab_runner_token", &["glrt-"], Cs::Url, 20, 64),
    t("gitlab_deploy_token", &["gldt-"], Cs::Url, 20, 64),
    t("slack_bot_token", &["xoxb-"], Cs::Url, 24, 255),
    t("slack_user_token", &["xoxp-"], Cs::Url, 24, 255),
    t("slack_app_token", &["xapp-"], Cs::Url, 30, 255),
    t("slack_webhook", &["hooks.slack.com/services/"], Cs::Path, 40, 120),
    t("stripe_key", &["sk_live_"], Cs::Alnum, 24, 247),
    t("stripe_restricted_key", &["rk_live_"], Cs::Alnum, 24, 247),
    t("stripe_test_key", &["sk_test_"], Cs::Alnum, 24, 247),
    t("twilio_key", &["SK"], Cs::HexLower, 32, 32),
    t("npm_token", &["npm_"], Cs::Alnum, 36, 36),
    t("pypi_token", &["pypi-AgEIcHlwaS5vcmc"], Cs::Url, 50, 300),
    t("huggingface_token", &["hf_"], Cs::Alnum, 30, 40),
    t("shopify_token", &["shpat_", "shpss_", "shpca_", "shppa_"], Cs::HexLower, 32, 32),
    t("digitalocean_token", &["dop_v1_", "doo_v1_", "dor_v1_"], Cs::HexLower, 64, 64),
    t("databricks_token", &["dapi"], Cs::HexLower, 32, 32),
    t("vault_token", &["hvs."], Cs::Url, 24, 200),
    t("doppler_token", &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct."], Cs::Alnum, 40, 44),
    t("linear_api_key", &["lin_api_"], Cs::Alnum, 40, 40),
    t("atlassian_token", &["ATATT3x"], Cs::Url, 50, 300),
    t("grafana_token", &["glsa_"], Cs::Word, 40, 50),
    t("new_relic_key", &["NRAK-"], Cs::UpperAlnum, 27, 27),
    t("sentry_token", &["sntrys_"], Cs::Base64, 50, 300),
    t("postman_key", &["PMAK-"], Cs::HexDash, 50, 70),
    t("dockerhub_token", &["dckr_pat_"], Cs::Url, 27, 40),
    t("age_secret_key", &["AGE-SECRET-KEY-1"], Cs::Bech32Upper, 58, 58),
];

/// Formats with their own check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    Email,
    Jwt,
    Pem,
    ConnUrl,
    ConnPassword,
    AwsSecret,
    Generic,
    SendGrid,
    AzureClientSecret,
    Telegram,
}

/// Anchors of the special formats.
pub(crate) const SPECIAL_ANCHORS: &[(&str, Special)] = &[
    ("@", Special::Email),
    ("eyJ", Special::Jwt),
    ("-----BEGIN ", Special::Pem),
    ("://", Special::ConnUrl),
    ("password=", Special::ConnPassword),
    ("pwd=", Special::ConnPassword),
    ("aws_secret_access_key", Special::AwsSecret),
    ("secretaccesskey", Special::AwsSecret),
    ("aws_secret_key", Special::AwsSecret),
    ("password", Special::Generic),
    ("passwd", Special::Generic),
    ("secret", Special::Generic),
    ("token", Special::Generic),
    ("api_key", Special::Generic),
    ("apikey", Special::Generic),
    ("api-key", Special::Generic),
    ("access_key", Special::Generic),
    ("SG.", Special::SendGrid),
    ("Q~", Special::AzureClientSecret),
    (":AA", Special::Telegram),
];

/// Detectors the keyword anchors lead to (the keyword automaton runs only if one is on).
pub(crate) const KEYWORD_DETECTORS: &[&str] =
    &["generic_secret", "connection_string_password", "aws_secret_access_key"];

/// Detector names implemented by the special checks.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const SPECIAL_NAMES: &[&str] = &[
    "email",
    "jwt",
    "private_key",
    "ssh_private_key",
    "pgp_private_key",
    "connection_string_password",
    "aws_secret_access_key",
    "generic_secret",
    "sendgrid_key",
    "azure_client_secret",
    "telegram_bot_token",
];

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Length of the run of `cs` bytes from `at`, up to `max + 1` (so "too long" is visible).
fn run(b: &[u8], at: usize, cs: Cs, max: usize) -> usize {
    b.get(at..).map_or(0, |s| s.iter().take(max + 1).take_while(|&&c| cs.has(c)).count())
}

fn push(out: &mut Vec<Match>, detector: &'static str, start: usize, end: usize) {
    out.push(Match { detector, start, end });
}

/// Confirms a prefixed token at `start..pend` (the prefix); the caller checked that its
/// detector is enabled.
pub(crate) fn confirm_token(i: usize, b: &[u8], start: usize, pend: usize, out: &mut Vec<Match>) {
    let Some(tk) = TOKENS.get(i) else { return };
    if tk.exact_case && !tk.prefixes.iter().any(|p| b.get(start..pend) == Some(p.as_bytes())) {
        return;
    }
    // A token starts at a word boundary (the webhook URL's host may follow `https://`).
    if tk.name != "slack_webhook" && start > 0 && is_word(b[start - 1]) {
        return;
    }
    if tk.name == "openai_api_key" {
        // sk-ant-… and sk-admin-… are other vendors' / other kinds of keys.
        let rest = b.get(pend..).unwrap_or_default();
        if rest.starts_with(b"ant-") || rest.starts_with(b"admin-") {
            return;
        }
    }
    let mut from = pend;
    if tk.name == "doppler_token" {
        // Service tokens name their config first: `dp.st.prd.<40 chars>`.
        let cfg = run(b, pend, Cs::Word, 32);
        if cfg > 0 && b.get(pend + cfg) == Some(&b'.') {
            from = pend + cfg + 1;
        }
    }
    let n = run(b, from, tk.cs, tk.max);
    if n < tk.min || n > tk.max {
        return;
    }
    let end = from + n;
    let body = &b[from..end];
    let mixed = match tk.name {
        // Hugging Face tokens are 34 letters of both cases, no digits.
        "huggingface_token" => {
            body.iter().any(u8::is_ascii_uppercase) && body.iter().any(u8::is_ascii_lowercase)
        }
        // Keys carry digits and letters; a run of one class is prose (sk-this-is-not-a-key…).
        _ => body.iter().any(u8::is_ascii_digit) && body.iter().any(u8::is_ascii_alphabetic),
    };
    if matches!(tk.cs, Cs::Url | Cs::Alnum | Cs::Word | Cs::Base64) && !mixed {
        return;
    }
    push(out, tk.name, start, end + tail(tk.name, b, end));
}

/// What a token's match goes on with past its body, so redaction leaves no part of the
/// secret: Sentry's `_<43-char secret>` after the base64 head, Atlassian's `=<8 hex>` check,
/// GitLab's routable `.<version>.<part>` segments.
fn tail(name: &str, b: &[u8], end: usize) -> usize {
    let rest = b.get(end..).unwrap_or_default();
    match name {
        "sentry_token" if rest.first() == Some(&b'_') => {
            let n = run(b, end + 1, Cs::Url, 64);
            if n >= 32 { 1 + n } else { 0 }
        }
        "atlassian_token" if rest.first() == Some(&b'=') => {
            let n = run(b, end + 1, Cs::UpperAlnum, 8);
            if n == 8 { 9 } else { 0 }
        }
        "gitlab_token" => {
            let mut at = 0;
            for _ in 0..3 {
                if rest.get(at) != Some(&b'.') {
                    break;
                }
                let n = run(b, end + at + 1, Cs::Url, 64);
                if n == 0 {
                    break;
                }
                at += 1 + n;
            }
            at
        }
        _ => 0,
    }
}

/// Confirms a special format anchored at `start..aend`.
pub(crate) fn confirm_special(
    s: Special,
    b: &[u8],
    start: usize,
    aend: usize,
    set: &DetectorSet,
    out: &mut Vec<Match>,
) {
    match s {
        Special::Email if set.has("email") => email(b, start, out),
        Special::Jwt if set.has("jwt") => jwt(b, start, out),
        Special::Pem => pem(b, start, aend, set, out),
        Special::ConnUrl if set.has("connection_string_password") => conn_url(b, start, out),
        Special::ConnPassword => {
            // `password=` also stands for the `password` keyword it contains.
            if set.has("connection_string_password") {
                conn_password(b, start, aend, out);
            }
            if set.has("generic_secret") && b[start..aend].eq_ignore_ascii_case(b"password=") {
                generic(b, start, aend - 1, out);
            }
        }
        Special::AwsSecret if set.has("aws_secret_access_key") => aws_secret(b, aend, out),
        Special::Generic if set.has("generic_secret") => generic(b, start, aend, out),
        Special::SendGrid if set.has("sendgrid_key") => sendgrid(b, start, out),
        Special::AzureClientSecret if set.has("azure_client_secret") => azure(b, start, out),
        Special::Telegram if set.has("telegram_bot_token") => telegram(b, start, out),
        _ => {}
    }
}

fn email(b: &[u8], at: usize, out: &mut Vec<Match>) {
    let local_ok = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let mut s = at;
    while s > 0 && at - s < 64 && local_ok(b[s - 1]) {
        s -= 1;
    }
    // `user:password@host` in a URL is not an address (the password is another detector's).
    if s == at
        || b[s] == b'.'
        || b[at - 1] == b'.'
        || (s > 0 && (is_word(b[s - 1]) || b[s - 1] == b'@' || b[s - 1] == b':'))
    {
        return;
    }
    // domain: labels of [A-Za-z0-9-], at least one dot, alphabetic TLD of 2+
    let mut e = at + 1;
    let mut last_dot = None;
    while e < b.len() && e - at <= 253 {
        let c = b[e];
        if c.is_ascii_alphanumeric() || c == b'-' {
            e += 1;
        } else if c == b'.'
            && e + 1 < b.len()
            && b[e + 1].is_ascii_alphanumeric()
            && b[e - 1] != b'.'
        {
            last_dot = Some(e);
            e += 1;
        } else {
            break;
        }
    }
    let Some(dot) = last_dot else { return };
    let tld = &b[dot + 1..e];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) || b[at + 1] == b'-' {
        return;
    }
    push(out, "email", s, e);
}

fn b64url_run(b: &[u8], at: usize, max: usize) -> usize {
    run(b, at, Cs::Url, max)
}

fn jwt(b: &[u8], at: usize, out: &mut Vec<Match>) {
    if at > 0 && (is_word(b[at - 1]) || b[at - 1] == b'-') {
        return;
    }
    let h = b64url_run(b, at, 2048);
    if !(10..=2048).contains(&h) || b.get(at + h) != Some(&b'.') {
        return;
    }
    let p0 = at + h + 1;
    let p = b64url_run(b, p0, 8192);
    if !(10..=8192).contains(&p) || b.get(p0 + p) != Some(&b'.') || !b[p0..].starts_with(b"eyJ") {
        return;
    }
    let s0 = p0 + p + 1;
    let sig = b64url_run(b, s0, 1024);
    if !(16..=1024).contains(&sig) {
        return;
    }
    push(out, "jwt", at, s0 + sig);
}

fn pem(b: &[u8], start: usize, aend: usize, set: &DetectorSet, out: &mut Vec<Match>) {
    let rest = b.get(aend..).unwrap_or_default();
    let line_end = rest.iter().take(64).position(|&c| c == b'-').unwrap_or(0);
    let label = &rest[..line_end];
    let name = if label == b"OPENSSH PRIVATE KEY" {
        "ssh_private_key"
    } else if label == b"PGP PRIVATE KEY BLOCK" {
        "pgp_private_key"
    } else if label.ends_with(b"PRIVATE KEY") && label.len() <= 24 {
        "private_key"
    } else {
        return;
    };
    if !set.has(name) || !rest[line_end..].starts_with(b"-----") {
        return;
    }
    // To the END line if there is one within 16 KiB, else to the end of the base64 body.
    let body_start = aend + line_end + 5;
    let window = &b[body_start..b.len().min(body_start + 16 * 1024)];
    let end = match find(window, b"-----END ") {
        Some(i) => {
            let after = body_start + i + 9;
            b[after..b.len().min(after + 64)]
                .windows(5)
                .position(|w| w == b"-----")
                .map_or(after, |j| after + j + 5)
        }
        None => {
            let n = window
                .iter()
                .take_while(|&&c| c.is_ascii_alphanumeric() || b"+/=\r\n :-\\".contains(&c))
                .count();
            if n < 64 {
                return;
            }
            body_start + n
        }
    };
    push(out, name, start, end);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `scheme://user:password@host`: the password is the match.
fn conn_url(b: &[u8], at: usize, out: &mut Vec<Match>) {
    let mut s = at;
    while s > 0 && at - s < 24 && (b[s - 1].is_ascii_alphanumeric() || b"+.-".contains(&b[s - 1])) {
        s -= 1;
    }
    if s == at {
        return;
    }
    let auth_start = at + 3;
    let limit = b.len().min(auth_start + 512);
    let mut colon = None;
    let mut i = auth_start;
    while i < limit {
        match b[i] {
            b':' if colon.is_none() => colon = Some(i),
            b'@' => break,
            b'/' | b' ' | b'"' | b'\'' | b'\n' | b'\r' | b'\t' | b'<' | b'>' => return,
            _ => {}
        }
        i += 1;
    }
    let (Some(c), true) = (colon, i < limit && b[i] == b'@') else { return };
    let pw = &b[c + 1..i];
    // `redis://:password@host`: a password without a user name is still one.
    let redis_style = c == auth_start
        && b.get(s..at).is_some_and(|scheme| {
            scheme.eq_ignore_ascii_case(b"redis") || scheme.eq_ignore_ascii_case(b"rediss")
        });
    if pw.is_empty() || (c == auth_start && !redis_style) || placeholder(pw) {
        return;
    }
    push(out, "connection_string_password", c + 1, i);
}

/// `Password=…;` in ADO.NET / ODBC connection strings.
fn conn_password(b: &[u8], start: usize, aend: usize, out: &mut Vec<Match>) {
    if start > 0 && is_word(b[start - 1]) {
        return;
    }
    let n = b
        .get(aend..)
        .unwrap_or_default()
        .iter()
        .take(129)
        .take_while(|&&c| !b";\"' \r\n\t&".contains(&c))
        .count();
    if n == 0 || n > 128 || placeholder(&b[aend..aend + n]) {
        return;
    }
    push(out, "connection_string_password", aend, aend + n);
}

fn placeholder(v: &[u8]) -> bool {
    let lower = v.to_ascii_lowercase();
    v.iter().all(|&c| c == b'*' || c == b'x' || c == b'X' || c == b'.')
        || v.starts_with(b"${")
        || v.starts_with(b"{{")
        || v.starts_with(b"<")
        || v.starts_with(b"%")
        || v.starts_with(b"$")
        || [
            &b"password"[..],
            b"pass",
            b"secret",
            b"changeme",
            b"redacted",
            b"your_password",
            b"yourpassword",
            b"example",
            b"null",
            b"none",
            b"true",
            b"false",
        ]
        .contains(&lower.as_slice())
}

/// Skips `[ \t"'`:=]` (at most 8) after a keyword; true when a `:` or `=` was among them.
fn skip_assign(b: &[u8], mut i: usize) -> (usize, bool) {
    let mut assigned = false;
    let stop = b.len().min(i + 8);
    while i < stop && b" \t\"'`:=>".contains(&b[i]) {
        assigned |= b[i] == b':' || b[i] == b'=' || b[i] == b'>';
        i += 1;
    }
    (i, assigned)
}

fn aws_secret(b: &[u8], aend: usize, out: &mut Vec<Match>) {
    let mut i = aend;
    // `aws_secret_access_key_id` etc.: allow a short suffix before the assignment
    let stop = b.len().min(i + 16);
    while i < stop && (is_word(b[i])) {
        i += 1;
    }
    let (v, assigned) = skip_assign(b, i);
    if !assigned {
        return;
    }
    let n = run(b, v, Cs::Base64, 40);
    if n != 40 || b[v..v + 40].iter().filter(|c| c.is_ascii_digit()).count() == 0 {
        return;
    }
    push(out, "aws_secret_access_key", v, v + 40);
}

fn entropy(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &c in v {
        counts[usize::from(c)] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A high-entropy value assigned to a secret-sounding key.
fn generic(b: &[u8], start: usize, aend: usize, out: &mut Vec<Match>) {
    if start > 0 && b[start - 1].is_ascii_alphanumeric() {
        return;
    }
    let mut i = aend;
    let stop = b.len().min(i + 24);
    while i < stop && (is_word(b[i]) || b[i] == b'-') {
        i += 1;
    }
    let (v, assigned) = skip_assign(b, i);
    if !assigned {
        return;
    }
    let val_ok = |c: u8| c.is_ascii_graphic() && !b"\"'`,;<>(){}[]\\".contains(&c);
    let n = b.get(v..).unwrap_or_default().iter().take(129).take_while(|&&c| val_ok(c)).count();
    if !(8..=128).contains(&n) {
        return;
    }
    let val = &b[v..v + n];
    if placeholder(val) {
        return;
    }
    let classes = [
        val.iter().any(u8::is_ascii_lowercase),
        val.iter().any(u8::is_ascii_uppercase),
        val.iter().any(u8::is_ascii_digit),
        val.iter().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|&&x| x)
    .count();
    let e = entropy(val);
    let strong = (n >= 16 && e >= 3.5 && classes >= 2) || (n >= 8 && classes >= 3 && e >= 2.5);
    if strong {
        push(out, "generic_secret", v, v + n);
    }
}

fn sendgrid(b: &[u8], at: usize, out: &mut Vec<Match>) {
    if b.get(at..at + 3) != Some(b"SG.") || (at > 0 && is_word(b[at - 1])) {
        return;
    }
    let a = run(b, at + 3, Cs::Url, 22);
    if a != 22 || b.get(at + 25) != Some(&b'.') {
        return;
    }
    let c = run(b, at + 26, Cs::Url, 43);
    if c != 43 {
        return;
    }
    push(out, "sendgrid_key", at, at + 69);
}

/// `[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}`
fn azure(b: &[u8], q: usize, out: &mut Vec<Match>) {
    if b.get(q..q + 2) != Some(b"Q~") || q < 4 || !b[q - 1].is_ascii_digit() {
        return;
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || b"_~.".contains(&c);
    if !b[q - 4..q - 1].iter().all(|&c| ok(c)) || (q >= 5 && ok(b[q - 5])) {
        return;
    }
    let mut n = b[q + 2..]
        .iter()
        .take(35)
        .take_while(|&&c| c.is_ascii_alphanumeric() || b"_~.-".contains(&c))
        .count();
    // A sentence's full stop after the secret is not part of it.
    while n > 31 && b[q + 1 + n] == b'.' {
        n -= 1;
    }
    if (31..=34).contains(&n) {
        push(out, "azure_client_secret", q - 4, q + 2 + n);
    }
}

/// `\d{8,10}:AA[A-Za-z0-9_-]{33}`
fn telegram(b: &[u8], colon: usize, out: &mut Vec<Match>) {
    if b.get(colon + 1..colon + 3) != Some(b"AA") {
        return;
    }
    let mut s = colon;
    while s > 0 && colon - s < 11 && b[s - 1].is_ascii_digit() {
        s -= 1;
    }
    // The Bot API URL writes the token after `bot`: `api.telegram.org/bot123…:AA…`.
    let after_bot = s >= 3 && &b[s - 3..s] == b"bot" && (s == 3 || !is_word(b[s - 4]));
    if !(8..=10).contains(&(colon - s)) || (s > 0 && is_word(b[s - 1]) && !after_bot) {
        return;
    }
    let n = run(b, colon + 1, Cs::Url, 35);
    if n == 35 {
        push(out, "telegram_bot_token", s, colon + 36);
    }
}
