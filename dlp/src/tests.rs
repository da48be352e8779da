//! The scanner's tests: anchors found by the block pass, the stretches the automata read,
//! custom detectors and sets.

use super::*;

/// `@`, `Q~`, `SK`, `-----BEGIN ` and the stretches of long runs are found by the block pass
/// wherever they sit against the block boundaries (the `Q` of `Q~` and the `S` of `SK` last
/// in a block included), as the separate passes they replaced found them.
#[test]
fn block_pass_anchors_at_every_offset() {
    let scanner = Scanner::new().unwrap();
    let cases = [
        ("email", "chloe+billing@mail.example.net", "chloe+billing@mail.example.net"),
        (
            "azure_client_secret",
            "secret Yb09Q~nqkrCP5u99shu5ucMfEg5.hGyBZSmyD-r8 x",
            "Yb09Q~nqkrCP5u99shu5ucMfEg5.hGyBZSmyD-r8",
        ),
        ("twilio_key", "SK9951749edb9a839dc1606e302eb938a0", "SK9951749edb9a839dc1606e302eb938a0"),
        (
            "connection_string_password",
            "DATABASE_URL=postgres://app:Xq7!pL2z@db.internal:5432/main",
            "Xq7!pL2z",
        ),
        ("private_key", &*format!("k: {pem}\n", pem = pem_block()), &*pem_block()),
        (
            "github_token",
            "token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8 ok",
            "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        ),
    ];
    for (name, text, want) in cases {
        let set = DetectorSet::from_names(&[name]).unwrap();
        for pad in 0..140 {
            let t = format!("{} {text} end", "x".repeat(pad));
            let mut out = Vec::new();
            scanner.scan(&t, &set, &mut out);
            let got: Vec<&str> = out.iter().map(|m| &t[m.start..m.end]).collect();
            assert_eq!(got, [want], "{name} after {pad} bytes");
        }
    }
}

/// Ties (same start, family and end) go to the registry's order, custom detectors last,
/// whatever pass found them first.
#[test]
fn ties_go_to_the_registry_order() {
    let m = |detector| Match { detector, start: 0, end: 5 };
    let mut a = [m("custom_x"), m("email"), m("phone")];
    let mut b = [m("phone"), m("custom_x"), m("email")];
    tidy(&mut a);
    tidy(&mut b);
    assert_eq!(a, b);
    assert_eq!(a[2].detector, "custom_x");
}

/// The block pass's stretches before assignments hold every keyword match reading the
/// whole text finds: random records of filler, keyword, name, quotes or spaces, assignment
/// and value, the keyword landing anywhere relative to the blocks.
#[test]
fn keyword_stretches_find_what_the_whole_text_finds() {
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::from_names(tokens::KEYWORD_DETECTORS).unwrap();
    let keywords = [
        "password",
        "PassWord",
        "passwd",
        "secret",
        "TOKEN",
        "api_key",
        "apikey",
        "api-key",
        "access_key",
        "aws_secret_access_key",
        "SecretAccessKey",
        "aws_secret_key",
        "pwd=",
        "password=",
        "aws_secret_access_key_secret",
    ];
    let values = [
        "hunter2Secret99",
        "A1b2C3d4E5f6G7h8",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE1",
        "S3cr3t!value",
        "x",
    ];
    let pick = |rnd: &mut dyn FnMut() -> u64, from: &[u8], n: u64| -> String {
        (0..rnd() % n).map(|_| from[(rnd() % from.len() as u64) as usize] as char).collect()
    };
    let mut rnd = crate::xorshift(0x51ce_5eed_u64);
    let mut found = 0;
    for round in 0..20_000 {
        let mut text = String::new();
        for _ in 0..1 + rnd() % 3 {
            text += &pick(&mut rnd, b" _-xQ9\n\".", 90);
            text += keywords[(rnd() % keywords.len() as u64) as usize];
            text += &pick(&mut rnd, b"_-aZ0", 26);
            text += &pick(&mut rnd, b" \t\"'`", 9);
            text += ["", ":", "=", ">", "=>"][(rnd() % 5) as usize];
            text += &pick(&mut rnd, b" \"", 3);
            text += values[(rnd() % values.len() as u64) as usize];
        }
        let b = text.as_bytes();
        let (mut whole, mut low) = (Vec::new(), Vec::new());
        scanner.keywords_in(b, 0, b.len(), &mut low, &set, &mut whole);
        let mut spans = Vec::new();
        let mut note = |f: blocks::Found, _: &mut Vec<Match>| {
            if let blocks::Found::Stretch(s, e) = f {
                spans.push((s, e));
            }
        };
        let mut also = blocks::Also { keywords: true, found: &mut note, ..blocks::no_others() };
        blocks::scan(b, &set, &mut Vec::new(), None, &mut also);
        let mut stretches = Vec::new();
        for (s, e) in spans {
            scanner.keywords_in(b, s, e, &mut low, &set, &mut stretches);
        }
        assert_eq!(whole, stretches, "round {round}: {text:?}");
        found += whole.len();
    }
    assert!(found > 2000, "the texts hold matches: {found}");
}

#[test]
fn every_registry_name_is_implemented() {
    let implemented: Vec<&str> = tokens::TOKENS
        .iter()
        .map(|t| t.name)
        .chain(tokens::SPECIAL_NAMES.iter().copied())
        .chain(numbers::NAMES.iter().copied())
        .collect();
    for d in DETECTORS {
        assert!(implemented.contains(&d.name), "{} has no implementation", d.name);
    }
    for n in &implemented {
        assert!(detector_id(n).is_some(), "{n} is not in the registry");
    }
    assert!(DETECTORS.len() <= 128);
    let credentials = DETECTORS.iter().filter(|d| d.family == "credential").count();
    assert!(credentials >= 40, "{credentials} credential rules");
}

#[test]
fn custom_detectors_regex_keywords_dictionary() {
    use sluice_rules::{CustomDetector, CustomKind, dictionary_hash};
    let defs = vec![
        CustomDetector {
            name: "customer_id".into(),
            kind: CustomKind::Regex(r"\bCUST-[0-9]{6}\b".into()),
        },
        CustomDetector {
            name: "codenames".into(),
            kind: CustomKind::Keywords(vec!["Bluebird".into(), "project falcon".into()]),
        },
        CustomDetector {
            name: "customers".into(),
            kind: CustomKind::Dictionary {
                hashes: {
                    let mut h =
                        vec![dictionary_hash(["acme", "corp"]), dictionary_hash(["globex"])];
                    h.sort_unstable();
                    h
                },
                entries: 2,
                max_words: 2,
            },
        },
    ];
    let s = Scanner::with_custom(&defs).unwrap();
    let set = s.profile(&["customer_id", "codenames", "customers", "email"]).unwrap();
    let text =
        "CUST-123456 for ACME Corp re Project  Falcon; bluebirds; globex@example.com and Globex.";
    let mut out = Vec::new();
    s.scan(text, &set, &mut out);
    let found: Vec<(&str, &str)> =
        out.iter().map(|m| (m.detector, &text[m.start..m.end])).collect();
    assert_eq!(
        found,
        [
            ("customer_id", "CUST-123456"),
            ("customers", "ACME Corp"),
            ("email", "globex@example.com"),
            ("customers", "Globex"),
        ],
        "keywords need word boundaries and exact spacing; bluebirds is not Bluebird"
    );
    let set = s.profile(&["codenames"]).unwrap();
    out.clear();
    s.scan("the Bluebird launch, project falcon too", &set, &mut out);
    assert_eq!(out.len(), 2);
    assert!(s.profile(&["nope"]).is_err());
}

#[test]
fn sets() {
    let s = DetectorSet::from_names(&["email", "jwt"]).unwrap();
    assert!(s.has("email") && s.has("jwt") && !s.has("iban"));
    assert_eq!(s.len(), 2);
    assert_eq!(DetectorSet::all().len(), DETECTORS.len());
    assert!(DetectorSet::from_names(&["nope"]).is_err());
}

fn pem_block() -> String {
    let body = "MHcCAQEEIBk".repeat(8);
    format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----")
}

/// The corpus's texts, each after a few pads that move it against the blocks.
fn corpus_texts() -> Vec<String> {
    let mut rnd = crate::xorshift(0x0dd_ba11);
    let mut texts = Vec::new();
    for line in include_str!("../testdata/corpus.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        for _ in 0..3 {
            let pad = (rnd() % 64) as usize;
            texts.push(format!("{}{text}", ["x", " ", "-", "a"][pad % 4].repeat(pad)));
        }
    }
    texts
}

/// The block pass's reports for `b` with every kind asked for.
fn reports(b: &[u8], set: &DetectorSet) -> Vec<blocks::Found> {
    let mut found = Vec::new();
    let mut note = |f: blocks::Found, _: &mut Vec<Match>| found.push(f);
    let mut also = blocks::Also {
        at: true,
        azure: true,
        twilio: true,
        keywords: true,
        pem: true,
        anchors: true,
        found: &mut note,
    };
    blocks::scan(b, set, &mut Vec::new(), None, &mut also);
    found
}

/// The anchor automaton finds in the stretches of long runs exactly what it finds in the
/// whole text: over the quality corpus (every detector's positives and hard negatives), moved
/// against the blocks, and random texts of prefixes and token characters.
#[test]
fn anchor_stretches_find_what_the_whole_text_finds() {
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::all();
    let mut rnd = crate::xorshift(0xa11_ca75);
    let prefixes: Vec<&str> =
        tokens::TOKENS.iter().flat_map(|t| t.prefixes.iter().copied()).collect();
    let mut texts = corpus_texts();
    let mut random = Vec::new();
    for _ in 0..3000 {
        let mut t = String::new();
        while t.len() < 300 {
            match rnd() % 4 {
                0 => {
                    // A prefix and a body that often passes: the charsets' common letters.
                    t += prefixes[(rnd() % prefixes.len() as u64) as usize];
                    let alphabet: &[u8] =
                        [b"aZ9fF2k".as_slice(), b"a9f2", b"AZ27", b"a9f2-"][(rnd() % 4) as usize];
                    t.extend(
                        (0..10 + rnd() % 60)
                            .map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize] as char),
                    );
                }
                1 => {
                    t += ["eyJ", "SG.", ":AA", ".", " ", "\"", ",", "(", "bot1234567890"]
                        [(rnd() % 9) as usize]
                }
                _ => t.extend(
                    (0..rnd() % 40).map(|_| b"aZ9fF2-_+/=."[(rnd() % 12) as usize] as char),
                ),
            }
        }
        random.push(t);
    }
    let corpus = texts.len();
    texts.extend(random);
    let (mut found, mut found_random) = (0, 0);
    for (i, t) in texts.iter().enumerate() {
        let b = t.as_bytes();
        let mut whole = Vec::new();
        scanner.anchors_in(b, 0, b.len(), &set, &mut whole);
        let mut stretches = Vec::new();
        for f in reports(b, &set) {
            if let blocks::Found::Long(s, e) = f {
                scanner.anchors_in(b, s, e, &set, &mut stretches);
            }
        }
        assert_eq!(whole, stretches, "{t:?}");
        match i < corpus {
            true => found += whole.len(),
            false => found_random += whole.len(),
        }
    }
    assert!(found > 1500, "the corpus holds matches: {found}");
    assert!(found_random > 1000, "the random texts hold matches: {found_random}");
}

/// A PEM block without an END line ends before the next BEGIN line (a body holds none), so
/// two such blocks are two findings, and a text of BEGIN lines costs each only the bytes to
/// the next.
#[test]
fn pem_bodies_end_at_the_next_begin_line() {
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::from_names(&["private_key"]).unwrap();
    let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC".repeat(4);
    let one = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n");
    let text = format!("{one}{one}");
    let mut out = Vec::new();
    scanner.scan(&text, &set, &mut out);
    let got: Vec<&str> = out.iter().map(|m| &text[m.start..m.end]).collect();
    assert_eq!(got, [one.as_str(), one.as_str()]);
}

/// Connection URLs found from their `@` are those found from their `://`, over the corpus
/// and random texts of schemes, user names, passwords, hosts and the bytes that end an
/// authority, some over the 512 bytes an authority may have.
#[test]
fn connection_urls_from_the_at_sign_are_those_from_the_scheme() {
    let set = DetectorSet::from_names(&["connection_string_password"]).unwrap();
    let mut rnd = crate::xorshift(0xc0_ffee);
    let mut texts = corpus_texts();
    let bits = [
        "postgres://",
        "redis://:",
        "u:pw!@h.x",
        "://",
        "redis",
        ":",
        "@",
        "/",
        " ",
        "u",
        "pw!",
        "\"",
        "<",
        "h.x",
    ];
    for _ in 0..20_000 {
        let n = 1 + rnd() % 24;
        let mut t: String = (0..n).map(|_| bits[(rnd() % bits.len() as u64) as usize]).collect();
        if rnd().is_multiple_of(8) {
            let at = rnd() as usize % (t.len() + 1);
            if t.is_char_boundary(at) {
                t.insert_str(at, &"k".repeat(500 + (rnd() % 24) as usize));
            }
        }
        texts.push(t);
    }
    let mut found = 0;
    for t in &texts {
        let b = t.as_bytes();
        let mut from_scheme = Vec::new();
        for (p, _) in t.match_indices("://") {
            tokens::confirm_special(Special::ConnUrl, b, p, p + 3, &set, &mut from_scheme);
        }
        let mut from_at = Vec::new();
        for (p, _) in t.match_indices('@') {
            if let Some(c) = tokens::conn_url_before(b, p) {
                tokens::confirm_special(Special::ConnUrl, b, c, c + 3, &set, &mut from_at);
            }
        }
        assert_eq!(from_scheme, from_at, "{t:?}");
        found += from_at.len();
    }
    assert!(found > 2000, "the texts hold matches: {found}");
}

/// The block pass reports every `-----BEGIN ` and nothing else as one, in runs of dashes and
/// dots of any length at any offset.
#[test]
fn pem_starts_are_every_begin_line() {
    let set = DetectorSet::from_names(&["private_key"]).unwrap();
    let mut rnd = crate::xorshift(0x9e3_779b);
    for _ in 0..5000 {
        let n = 1 + rnd() % 40;
        let t: String = (0..n)
            .map(|_| ["-", "-----", ".", "BEGIN ", "BEGIN", "x", " "][(rnd() % 7) as usize])
            .collect();
        let want: Vec<usize> = t.match_indices("-----BEGIN ").map(|(p, _)| p).collect();
        let got: Vec<usize> = reports(t.as_bytes(), &set)
            .into_iter()
            .filter_map(|f| match f {
                blocks::Found::Pem(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(got, want, "{t:?}");
    }
}

/// Every match of the anchor automaton's detectors is a run of at least
/// [`text::MIN_BASE64_RUN`] bytes of the base64 superset (`+` to 0x7F): the shortest
/// bodies each format accepts, with their shortest prefixes.
#[test]
fn anchored_matches_are_long_runs() {
    let scanner = Scanner::new().unwrap();
    for t in tokens::TOKENS {
        let p = t.prefixes.iter().min_by_key(|p| p.len()).unwrap();
        if p.len() < 3 {
            continue; // `SK`: found by the block pass
        }
        assert!(p.len() + t.min_len() >= text::MIN_BASE64_RUN, "{}", t.name);
    }
    // The specials the automaton leads to, at their shortest.
    for (name, m) in [
        ("jwt", "eyJhbGciOi.eyJzdWIiOi.SflKxwRJSMeKKF2Q"),
        ("telegram_bot_token", "12345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"),
    ] {
        let set = DetectorSet::from_names(&[name]).unwrap();
        let mut out = Vec::new();
        scanner.scan(m, &set, &mut out);
        assert_eq!(out.iter().map(|x| &m[x.start..x.end]).collect::<Vec<_>>(), [m], "{name}");
        assert!(m.len() >= text::MIN_BASE64_RUN && m.bytes().all(|c| (0x2B..0x80).contains(&c)));
        // One byte shorter is no match.
        let short = &m[..m.len() - 1];
        let mut out = Vec::new();
        scanner.scan(short, &set, &mut out);
        assert!(out.is_empty(), "{name}: {short}");
    }
}
