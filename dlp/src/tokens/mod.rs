//! Credential formats: prefixed tokens described by a table (prefix, charset, length), and the
//! formats that need their own check (JWTs, PEM blocks, connection strings, keyword-anchored
//! secrets, emails, SendGrid, Azure client secrets, Telegram). Every check is bounded and
//! looks only at the bytes around its anchor.

mod special;

use super::{DetectorSet, Match, has};
use special::*;

pub(crate) use special::conn_url_before;

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
    /// What makes a body of `cs` a key rather than prose.
    classes: Classes,
    /// A `<name>.` segment the body may follow (Doppler's config: `dp.st.prd.…`).
    lead: bool,
    /// What the match goes on with past the body, so redaction leaves no part of the secret.
    tail: Tail,
}

/// Character classes a body must mix (for the charsets where prose could pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Classes {
    /// Digits and letters (sk-this-is-not-a-key… is prose).
    DigitsAndLetters,
    /// Letters of both cases (Hugging Face tokens have no digit).
    BothCases,
}

/// A token's part after its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    None,
    /// `sep` and `min..=max` bytes of `cs` (Sentry's `_<secret>`, Atlassian's `=<checksum>`).
    After(u8, Cs, usize, usize),
    /// Up to three `.`-separated segments of `[A-Za-z0-9_-]` (GitLab's routable tokens).
    Segments,
}

const fn t(
    name: &'static str,
    prefixes: &'static [&'static str],
    cs: Cs,
    min: usize,
    max: usize,
) -> Token {
    Token {
        name,
        prefixes,
        cs,
        min,
        max,
        exact_case: true,
        classes: Classes::DigitsAndLetters,
        lead: false,
        tail: Tail::None,
    }
}

impl Token {
    /// The shortest body.
    #[cfg(test)]
    pub(crate) fn min_len(&self) -> usize {
        self.min
    }

    const fn both_cases(mut self) -> Self {
        self.classes = Classes::BothCases;
        self
    }

    const fn lead(mut self) -> Self {
        self.lead = true;
        self
    }

    const fn tail(mut self, tail: Tail) -> Self {
        self.tail = tail;
        self
    }
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
    t("gitlab_token", &["glpat-"], Cs::Url, 20, 64).tail(Tail::Segments),
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
    t("huggingface_token", &["hf_"], Cs::Alnum, 30, 40).both_cases(),
    t("shopify_token", &["shpat_", "shpss_", "shpca_", "shppa_"], Cs::HexLower, 32, 32),
    t("digitalocean_token", &["dop_v1_", "doo_v1_", "dor_v1_"], Cs::HexLower, 64, 64),
    t("databricks_token", &["dapi"], Cs::HexLower, 32, 32),
    t("vault_token", &["hvs."], Cs::Url, 24, 200),
    t("doppler_token", &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct."], Cs::Alnum, 40, 44).lead(),
    t("linear_api_key", &["lin_api_"], Cs::Alnum, 40, 40),
    t("atlassian_token", &["ATATT3x"], Cs::Url, 50, 300).tail(Tail::After(
        b'=',
        Cs::UpperAlnum,
        8,
        8,
    )),
    t("grafana_token", &["glsa_"], Cs::Word, 40, 50),
    t("new_relic_key", &["NRAK-"], Cs::UpperAlnum, 27, 27),
    t("sentry_token", &["sntrys_"], Cs::Base64, 50, 300).tail(Tail::After(b'_', Cs::Url, 32, 300)),
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

impl Special {
    /// The detectors this check reports.
    pub(crate) fn detectors(self) -> &'static [&'static str] {
        match self {
            Special::Email => &["email"],
            Special::Jwt => &["jwt"],
            Special::Pem => &["private_key", "ssh_private_key", "pgp_private_key"],
            Special::ConnUrl => &["connection_string_password"],
            // `password=` also stands for the `password` keyword.
            Special::ConnPassword => &["connection_string_password", "generic_secret"],
            Special::AwsSecret => &["aws_secret_access_key"],
            Special::Generic => &["generic_secret"],
            Special::SendGrid => &["sendgrid_key"],
            Special::AzureClientSecret => &["azure_client_secret"],
            Special::Telegram => &["telegram_bot_token"],
        }
    }
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
    if tk.lead {
        let seg = run(b, pend, Cs::Word, 32);
        if seg > 0 && b.get(pend + seg) == Some(&b'.') {
            from = pend + seg + 1;
        }
    }
    let n = run(b, from, tk.cs, tk.max);
    if n < tk.min || n > tk.max {
        return;
    }
    let end = from + n;
    let body = &b[from..end];
    let mixed = match tk.classes {
        Classes::BothCases => {
            body.iter().any(u8::is_ascii_uppercase) && body.iter().any(u8::is_ascii_lowercase)
        }
        Classes::DigitsAndLetters => {
            body.iter().any(u8::is_ascii_digit) && body.iter().any(u8::is_ascii_alphabetic)
        }
    };
    if matches!(tk.cs, Cs::Url | Cs::Alnum | Cs::Word | Cs::Base64) && !mixed {
        return;
    }
    push(out, tk.name, start, end + tail(tk.tail, b, end));
}

/// The length of a token's tail at `end` (0 when it has none there).
fn tail(t: Tail, b: &[u8], end: usize) -> usize {
    match t {
        Tail::None => 0,
        Tail::After(sep, cs, min, max) if b.get(end) == Some(&sep) => {
            let n = run(b, end + 1, cs, max);
            if (min..=max).contains(&n) { 1 + n } else { 0 }
        }
        Tail::After(..) => 0,
        Tail::Segments => {
            let mut at = 0;
            for _ in 0..3 {
                if b.get(end + at) != Some(&b'.') {
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
        Special::Email if has!(set, "email") => email(b, start, out),
        Special::Jwt if has!(set, "jwt") => jwt(b, start, out),
        Special::Pem => pem(b, start, aend, set, out),
        Special::ConnUrl if has!(set, "connection_string_password") => conn_url(b, start, out),
        Special::ConnPassword => {
            // `password=` also stands for the `password` keyword it contains.
            if has!(set, "connection_string_password") {
                conn_password(b, start, aend, out);
            }
            if has!(set, "generic_secret") && b[start..aend].eq_ignore_ascii_case(b"password=") {
                generic(b, start, aend - 1, out);
            }
        }
        Special::AwsSecret if has!(set, "aws_secret_access_key") => aws_secret(b, aend, out),
        Special::Generic if has!(set, "generic_secret") => generic(b, start, aend, out),
        Special::SendGrid if has!(set, "sendgrid_key") => sendgrid(b, start, out),
        Special::AzureClientSecret if has!(set, "azure_client_secret") => azure(b, start, out),
        Special::Telegram if has!(set, "telegram_bot_token") => telegram(b, start, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte a prefixed token's match can hold (prefix, `lead` segment, body, tail) is in
    /// the base64 superset (`+` to 0x7F), which the scanner's search for prefixes relies on
    /// (it reads only the stretches of long runs of those bytes).
    #[test]
    fn token_bytes_are_in_the_base64_superset() {
        let superset = |c: u8| (0x2B..0x80).contains(&c);
        let charsets = |t: &Token| {
            let mut cs = vec![t.cs];
            match t.tail {
                Tail::After(sep, c, ..) => {
                    assert!(superset(sep), "{}", t.name);
                    cs.push(c);
                }
                Tail::Segments => cs.push(Cs::Url),
                Tail::None => {}
            }
            if t.lead {
                cs.push(Cs::Word);
            }
            cs
        };
        for t in TOKENS {
            for p in t.prefixes {
                assert!(p.bytes().all(superset), "{p}");
            }
            for cs in charsets(t) {
                for c in 0..=255u8 {
                    assert!(!cs.has(c) || superset(c), "{}: {cs:?} has {c:#x}", t.name);
                }
            }
        }
        // The separators of `lead` and `Tail::Segments`.
        assert!(superset(b'.'));
    }
}
