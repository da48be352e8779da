//! The credential formats with checks of their own: emails, JWTs, PEM blocks, connection
//! strings (URL passwords, `Password=`), keyword-anchored secrets (AWS secret keys, the generic
//! high-entropy value after `password`, `token`, …), SendGrid, Azure client secrets, Telegram.
//! Each is bounded and looks only at the bytes around its anchor; [`super::confirm_special`]
//! dispatches to them.

use super::{Cs, DetectorSet, Match, is_word, push, run};

pub(super) fn email(b: &[u8], at: usize, out: &mut Vec<Match>) {
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

pub(super) fn b64url_run(b: &[u8], at: usize, max: usize) -> usize {
    run(b, at, Cs::Url, max)
}

pub(super) fn jwt(b: &[u8], at: usize, out: &mut Vec<Match>) {
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

pub(super) fn pem(b: &[u8], start: usize, aend: usize, set: &DetectorSet, out: &mut Vec<Match>) {
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
    // To the END line if there is one within 16 KiB, else to the end of the base64 body; a
    // body holds no other BEGIN line, so neither goes past one (a text of BEGIN lines costs
    // each only the bytes to the next).
    let body_start = aend + line_end + 5;
    let mut window = &b[body_start..b.len().min(body_start + 16 * 1024)];
    if let Some(next) = memchr::memmem::find(window, b"-----BEGIN ") {
        window = &window[..next];
    }
    let end = match memchr::memmem::find(window, b"-----END ") {
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

/// Bytes that end a URL's authority where [`conn_url`] reads it (`@` ends it too).
const AUTHORITY_ENDS: &[u8] = b"/ \"'\n\r\t<>";

/// Longest authority [`conn_url`] reads.
const MAX_AUTHORITY: usize = 512;

/// The `://` whose authority the `@` at `at` ends, as [`conn_url`] reads it forward: the
/// bytes between hold no [`AUTHORITY_ENDS`] and no other `@`, and are fewer than
/// [`MAX_AUTHORITY`]. Connection URLs are found from their `@` (which the block pass finds
/// for emails too), not from `://`: their matches can be short, so no other search finds
/// them as quickly.
pub(crate) fn conn_url_before(b: &[u8], at: usize) -> Option<usize> {
    let floor = at.saturating_sub(MAX_AUTHORITY);
    let mut t = at;
    while t > floor {
        t -= 1;
        match b[t] {
            b'/' => return (t >= 2 && &b[t - 2..t] == b":/").then(|| t - 2),
            c if c == b'@' || AUTHORITY_ENDS.contains(&c) => return None,
            _ => {}
        }
    }
    None
}

/// `scheme://user:password@host`: the password is the match.
pub(super) fn conn_url(b: &[u8], at: usize, out: &mut Vec<Match>) {
    let mut s = at;
    while s > 0 && at - s < 24 && (b[s - 1].is_ascii_alphanumeric() || b"+.-".contains(&b[s - 1])) {
        s -= 1;
    }
    if s == at {
        return;
    }
    let auth_start = at + 3;
    let limit = b.len().min(auth_start + MAX_AUTHORITY);
    let mut colon = None;
    let mut i = auth_start;
    while i < limit {
        match b[i] {
            b':' if colon.is_none() => colon = Some(i),
            b'@' => break,
            c if AUTHORITY_ENDS.contains(&c) => return,
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
pub(super) fn conn_password(b: &[u8], start: usize, aend: usize, out: &mut Vec<Match>) {
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

pub(super) fn placeholder(v: &[u8]) -> bool {
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
pub(super) fn skip_assign(b: &[u8], mut i: usize) -> (usize, bool) {
    let mut assigned = false;
    let stop = b.len().min(i + 8);
    while i < stop && b" \t\"'`:=>".contains(&b[i]) {
        assigned |= b[i] == b':' || b[i] == b'=' || b[i] == b'>';
        i += 1;
    }
    (i, assigned)
}

pub(super) fn aws_secret(b: &[u8], aend: usize, out: &mut Vec<Match>) {
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

pub(super) fn entropy(v: &[u8]) -> f64 {
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
pub(super) fn generic(b: &[u8], start: usize, aend: usize, out: &mut Vec<Match>) {
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

pub(super) fn sendgrid(b: &[u8], at: usize, out: &mut Vec<Match>) {
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
pub(super) fn azure(b: &[u8], q: usize, out: &mut Vec<Match>) {
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
pub(super) fn telegram(b: &[u8], colon: usize, out: &mut Vec<Match>) {
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
