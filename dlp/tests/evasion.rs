//! Each way of hiding a card, an SSN or a key from the extractor that issue 15 lists, tried
//! as an attacker would write it: found, at the right path, and redacted where it was sent.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sluice_dlp::extract::{Outcome, Request, inspect};
use sluice_dlp::{DetectorSet, Scanner};

const CARD: &str = "4111 1111 1111 1111";

fn run(ct: &str, body: &[u8], redact: bool) -> Outcome {
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::from_names(&["credit_card", "us_ssn", "aws_access_key_id"]).unwrap();
    let ct = (!ct.is_empty()).then_some(ct.as_bytes());
    inspect(&scanner, &set, Request { content_type: ct, body, redact, salt: b"s" })
}

fn found(o: &Outcome) -> Vec<(&'static str, String)> {
    o.findings.iter().map(|f| (f.detector, f.path.clone())).collect()
}

fn card_at(o: &Outcome, path: &str) {
    assert!(
        o.findings.iter().any(|f| f.detector == "credit_card" && f.path == path),
        "no card at {path}: {:?} (unscanned {:?})",
        found(o),
        o.unscanned
    );
}

fn chat(content: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}),
    )
    .unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn json_with_one_invalid_utf8_byte() {
    let mut body = chat(&format!("caf\u{e9} {CARD}"));
    let at = body.iter().position(|&b| b == 0xc3).unwrap();
    body[at] = 0xe9; // Latin-1 é inside UTF-8
    body.remove(at + 1);
    let o = run("application/json", &body, true);
    card_at(&o, "$.messages[0].content");
    assert_eq!(o.decoded, ["$ (invalid UTF-8)"]);
    let red = o.redacted.unwrap();
    assert!(!String::from_utf8_lossy(&red).contains("4111"));
}

#[test]
fn utf16_json() {
    let json = String::from_utf8(chat(CARD)).unwrap();
    let le: Vec<u8> = json.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let o = run("application/json", &le, true);
    card_at(&o, "$.messages[0].content");
    let red = o.redacted.unwrap();
    let back: Vec<u16> = red.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let back = String::from_utf16(&back).unwrap();
    assert!(back.contains("[REDACTED:credit_card]"), "written back in UTF-16: {back}");
}

#[test]
fn latin1_json() {
    let body = format!("{{\"messages\":[{{\"content\":\"caf\u{e9} {CARD}\"}}]}}");
    let latin1: Vec<u8> = body.chars().map(|c| c as u8).collect();
    let o = run("application/json; charset=iso-8859-1", &latin1, true);
    card_at(&o, "$.messages[0].content");
    let red = o.redacted.unwrap();
    assert!(red.windows(4).any(|w| w == b"caf\xe9"), "still Latin-1");
}

#[test]
fn gzip_body_without_the_header() {
    let o = run("application/json", &gzip(&chat(CARD)), true);
    card_at(&o, "$.messages[0].content");
    assert_eq!(o.decoded, ["$ (gzip)"]);
    let red = o.redacted.unwrap();
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&red[..]), &mut plain).unwrap();
    assert!(plain.contains("[REDACTED:credit_card]"), "re-compressed: {plain}");
}

#[test]
fn corrupt_gzip_is_named_unscanned() {
    let mut g = gzip(&chat(CARD));
    g.truncate(g.len() / 2);
    let o = run("application/json", &g, false);
    assert!(o.findings.is_empty());
    assert_eq!(o.unscanned_text(), ["$ (corrupt gzip body)"]);
}

fn multipart(boundary: &str, part_head: &str, data: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes.bin\"\r\n{part_head}\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

#[test]
fn multipart_octet_stream_part_holding_text() {
    let body = multipart(
        "XyZ",
        "Content-Type: application/octet-stream",
        format!("card {CARD}\n").as_bytes(),
    );
    let o = run("multipart/form-data; boundary=XyZ", &body, false);
    card_at(&o, "$.file(notes.bin)");
}

#[test]
fn multipart_gzip_part() {
    let body = multipart(
        "XyZ",
        "Content-Type: application/gzip",
        &gzip(format!("card {CARD}\n").as_bytes()),
    );
    let o = run("multipart/form-data; boundary=XyZ", &body, true);
    card_at(&o, "$.file(notes.bin)");
    assert!(o.redacted.is_some());
}

#[test]
fn multipart_base64_transfer_encoded_part() {
    let data = STANDARD.encode(format!("card {CARD}\n"));
    let body = multipart(
        "XyZ",
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64",
        data.as_bytes(),
    );
    let o = run("multipart/form-data; boundary=XyZ", &body, true);
    card_at(&o, "$.file(notes.bin)");
    let red = String::from_utf8(o.redacted.unwrap()).unwrap();
    let part = red.split("\r\n\r\n").nth(2).unwrap().split("\r\n--").next().unwrap();
    let plain = String::from_utf8(STANDARD.decode(part.replace("\r\n", "")).unwrap()).unwrap();
    assert_eq!(plain, "card [REDACTED:credit_card]\n", "re-encoded in base64");
}

#[test]
fn multipart_with_a_wrong_boundary() {
    let body = multipart("RealOne", "Content-Type: text/plain", format!("card {CARD}").as_bytes());
    let o = run("multipart/form-data; boundary=Declared", &body, false);
    card_at(&o, "$.file(notes.bin)");
    let garbage = format!("--nope\r\nbroken card {CARD}");
    let o = run("multipart/form-data; boundary=Declared", garbage.as_bytes(), false);
    card_at(&o, "$");
    assert_eq!(o.unscanned_text(), ["$ (malformed multipart body)"], "scanned as text, and named");
}

#[test]
fn form_urlencoded_body() {
    let body = format!("model=gpt-4o&prompt=my+card+is+{}", CARD.replace(' ', "%20"));
    let o = run("application/x-www-form-urlencoded", body.as_bytes(), true);
    card_at(&o, "$.prompt");
    let red = String::from_utf8(o.redacted.unwrap()).unwrap();
    assert!(
        red.starts_with("model=gpt-4o&prompt=my+card+is+%5BREDACTED%3Acredit_card%5D"),
        "{red}"
    );
}

fn normalised(content: &str) {
    let o = run("application/json", &chat(content), true);
    card_at(&o, "$.messages[0].content");
    let red = String::from_utf8(o.redacted.unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&red).unwrap();
    let text = v["messages"][0]["content"].as_str().unwrap();
    assert_eq!(text, "card [REDACTED:credit_card] ok", "{content:?}");
}

#[test]
fn zero_width_space_between_digits() {
    normalised("card 4111\u{200b}1111\u{200b}1111\u{200b}1111 ok");
}

#[test]
fn zero_width_joiner_between_digits() {
    normalised("card 4\u{200d}111 1111 1111 111\u{200d}1 ok");
}

#[test]
fn soft_hyphen_between_digits() {
    normalised("card 4111\u{ad}1111\u{ad}1111\u{ad}1111 ok");
}

#[test]
fn nbsp_between_digits() {
    normalised("card 4111\u{a0}1111\u{a0}1111\u{a0}1111 ok");
}

#[test]
fn full_width_digits() {
    normalised("card ４１１１ １１１１ １１１１ １１１１ ok");
}

#[test]
fn arabic_indic_digits() {
    normalised("card ٤١١١ ١١١١ ١١١١ ١١١١ ok");
}

#[test]
fn dots_as_separators() {
    normalised("card 4111.1111.1111.1111 ok");
}

#[test]
fn newlines_as_separators() {
    normalised("card 4111\n1111\n1111\n1111 ok");
}

#[test]
fn card_as_a_json_number() {
    let o = run(
        "application/json",
        br#"{"messages":[{"role":"user","content":"pay"}],"ref":4111111111111111}"#,
        true,
    );
    card_at(&o, "$.ref");
    let red = String::from_utf8(o.redacted.unwrap()).unwrap();
    assert!(red.contains(r#""ref":"[REDACTED:credit_card]""#), "{red}");
}

#[test]
fn card_as_a_json_key() {
    let o = run("application/json", br#"{"metadata":{"4111111111111111":"card"},"n":1}"#, true);
    card_at(&o, "$.metadata(key)");
    let red = String::from_utf8(o.redacted.unwrap()).unwrap();
    assert!(!red.contains("4111"), "{red}");
    let recorded = format!("{:?}", o.findings);
    assert!(!recorded.contains("4111"), "the key is not in any path: {recorded}");
}

#[test]
fn base64_of_a_prompt_inside_a_text_field() {
    let hidden = STANDARD.encode(format!("my card is {CARD}, key AKIAIOSFODNN7EXAMPLE"));
    let o = run("application/json", &chat(&format!("decode this and go on: {hidden}")), true);
    card_at(&o, "$.messages[0].content(base64)");
    let red = String::from_utf8(o.redacted.unwrap()).unwrap();
    assert!(red.contains("decode this and go on: [REDACTED:credit_card]"), "{red}");
    let twice = STANDARD.encode(STANDARD.encode(format!("card {CARD}")));
    let o = run("application/json", &chat(&twice), false);
    card_at(&o, "$.messages[0].content(base64)(base64)");
}

#[test]
fn a_number_split_across_two_messages() {
    let body = br#"{"messages":[{"role":"user","content":"my card starts 4111 1111"},{"role":"user","content":"1111 1111 is the rest"}]}"#;
    let o = run("application/json", body, true);
    card_at(&o, "$.messages[0].content + $.messages[1].content");
    assert!(o.split && !o.unredactable.is_empty(), "cannot be redacted in place: refused instead");
    let glued = br#"{"messages":[{"role":"user","content":"41111111"},{"role":"user","content":"11111111"}]}"#;
    card_at(
        &run("application/json", glued, false),
        "$.messages[0].content + $.messages[1].content",
    );
}

#[test]
fn hard_negatives_stay_clean() {
    for text in [
        "version 4.1.11.1111 released",
        "call 555-0100\n555-0101 tomorrow",
        "ids 4111 and 1111 1111",
        "ZGVjb2RlIG1lIHBsZWFzZSwgbm90aGluZyBoZXJl (plain base64 of harmless text)",
        "réservé à l'équipe, numéro 12",
    ] {
        let o = run("application/json", &chat(text), false);
        assert!(o.findings.is_empty() && o.unscanned.is_empty(), "{text}: {:?}", found(&o));
    }
    let o = run(
        "application/json",
        br#"{"messages":[{"role":"user","content":"order 4111"},{"role":"user","content":"qty 2"}]}"#,
        false,
    );
    assert!(o.findings.is_empty());
}

#[test]
fn responses_api_input_items_files_and_instructions() {
    let file = STANDARD.encode(format!("name,card\nbob,{CARD}\n"));
    let body = serde_json::json!({
        "model": "gpt-4.1",
        "instructions": "You are a helpful assistant. Customer SSN 123-45-6789.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "summarise the file"},
                {"type": "input_file", "filename": "cards.csv", "file_data": format!("data:text/csv;base64,{file}")},
                {"type": "input_image", "image_url": "https://example.com/x.png"}
            ]},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"card\": \"\\u0034111 1111 1111 1111\"}"}
        ]
    });
    let o = run("application/json", &serde_json::to_vec(&body).unwrap(), true);
    let found = found(&o);
    assert!(found.contains(&("us_ssn", "$.instructions".into())), "{found:?}");
    card_at(&o, "$.input[0].content[1].file_data(base64)");
    card_at(&o, "$.input[1].output(json).card");
    let red: serde_json::Value = serde_json::from_slice(&o.redacted.unwrap()).unwrap();
    assert!(!red.to_string().contains("4111") && !red.to_string().contains("123-45-6789"));
    let string_input = serde_json::json!({"model": "gpt-4.1", "input": format!("card {CARD}")});
    card_at(
        &run("application/json", &serde_json::to_vec(&string_input).unwrap(), false),
        "$.input",
    );
}

#[test]
fn responses_api_image_data_urls_are_read_by_their_content() {
    // A real image is named unscanned; text sent as an "image" is read as the text it is.
    let png = STANDARD.encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0");
    let text = STANDARD.encode(format!("note: card {CARD} for the refund"));
    let body = serde_json::json!({
        "model": "gpt-4.1",
        "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": format!("data:image/png;base64,{png}")},
            {"type": "input_image", "image_url": format!("data:image/png;base64,{text}")}
        ]}]
    });
    let o = run("application/json", &serde_json::to_vec(&body).unwrap(), false);
    card_at(&o, "$.input[0].content[1].image_url(base64)");
    assert!(
        o.unscanned
            .iter()
            .any(|u| u.path.contains("$.input[0].content[0].image_url") && u.reason == "PNG image"),
        "{:?}",
        o.unscanned
    );
}

#[test]
fn tool_call_arguments_are_read_as_json() {
    // The card is written with JSON escapes inside the arguments string: only reading that
    // string as JSON shows it.
    let args = r#"{"note":"\u0034\u0031\u0031\u0031 1111 1111 1111"}"#;
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "pay it"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "pay", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"status\":\"ok\",\"ssn\":\"123-45-6789\"}"}
        ]
    });
    let o = run("application/json", &serde_json::to_vec(&body).unwrap(), true);
    card_at(&o, "$.messages[1].tool_calls[0].function.arguments(json).note");
    assert!(
        found(&o).contains(&("us_ssn", "$.messages[2].content(json).ssn".into())),
        "{:?}",
        found(&o)
    );
    let red: serde_json::Value = serde_json::from_slice(&o.redacted.unwrap()).unwrap();
    let args = red["messages"][1]["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
    let inner: serde_json::Value = serde_json::from_str(args).unwrap();
    assert_eq!(inner["note"], "[REDACTED:credit_card]", "still JSON inside: {args}");
}

fn matched(detectors: &[&str], text: &str) -> Vec<(&'static str, String)> {
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::from_names(detectors).unwrap();
    let mut out = Vec::new();
    scanner.scan(text, &set, &mut out);
    out.iter().map(|m| (m.detector, text[m.start..m.end].to_owned())).collect()
}

/// Formats the corpus review found missed or matched only in part (a part left unredacted is
/// a leak): each as its vendor documents it.
#[test]
fn documented_formats_are_matched_whole() {
    let hf = "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";
    assert_eq!(
        matched(&["huggingface_token"], &format!("token {hf} ok")),
        [("huggingface_token", hf.into())]
    );
    assert!(matched(&["huggingface_token"], "hf_lowercaseonlyidentifiernamehere ok").is_empty());
    let sentry = "sntrys_eyJpYXQiOjE3MDAwMDAwMDAsInVybCI6Imh0dHBzOi8vc2VudHJ5LmlvIn0=_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5";
    assert_eq!(
        matched(&["sentry_token"], &format!("SENTRY_AUTH_TOKEN={sentry}\n")),
        [("sentry_token", sentry.into())]
    );
    let atl = format!(
        "ATATT3x{}=0A1B2C3D",
        "FfGF0a1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v2W3x4Y5z6A7b8C9d0E1f2G3h4"
    );
    assert_eq!(
        matched(&["atlassian_token"], &format!("jira {atl} ok")),
        [("atlassian_token", atl.clone())]
    );
    let glpat = "glpat-AbCdEfGhIjKlMnOpQrStUvWx1.01.1a2b3c4d5";
    assert_eq!(
        matched(&["gitlab_token"], &format!("git {glpat} ok")),
        [("gitlab_token", glpat.into())]
    );
    let doppler = format!("dp.st.prd.{}", "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3Ab4C");
    assert_eq!(
        matched(&["doppler_token"], &format!("DOPPLER_TOKEN={doppler}")),
        [("doppler_token", doppler.clone())]
    );
    let tg = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1";
    assert_eq!(
        matched(&["telegram_bot_token"], &format!("curl https://api.telegram.org/bot{tg}/getMe")),
        [("telegram_bot_token", tg.into())]
    );
    assert_eq!(
        matched(
            &["connection_string_password"],
            "REDIS_URL=redis://:s3cr3tPassw0rd@cache.internal:6379/0"
        ),
        [("connection_string_password", "s3cr3tPassw0rd".into())]
    );
    assert_eq!(
        matched(&["credit_card"], "card 3088000000000017 ok"),
        [("credit_card", "3088000000000017".into())]
    );
}

/// What an independent review of this code found getting past it, each now read.
#[test]
fn review_findings_stay_fixed() {
    // Base64 file data written as servers accept it: line breaks, and non-zero trailing bits.
    let file = STANDARD.encode(format!("name,card\nbob,{CARD}\n"));
    let wrapped: String =
        file.as_bytes().chunks(10).map(|c| format!("{}\n", String::from_utf8_lossy(c))).collect();
    let body = serde_json::json!({"input": [{"type": "input_file", "file_data": format!("data:text/csv;base64,{wrapped}")}]});
    card_at(
        &run("application/json", &serde_json::to_vec(&body).unwrap(), false),
        "$.input[0].file_data(base64)",
    );
    // Magic bytes at the start of text do not make it an image or a song.
    for lead in ["GIF89a\n", "ID3 ", "RIFF....WAVE "] {
        let o = run("text/plain", format!("{lead}my card {CARD}").as_bytes(), false);
        card_at(&o, "$");
        assert!(o.unscanned.is_empty(), "{lead}: {:?}", o.unscanned);
    }
    // A wide charset declared over plain UTF-8 is not believed.
    card_at(
        &run("application/json; charset=utf-16le", &chat(&format!("card {CARD}")), false),
        "$.messages[0].content",
    );
    // A long key of letters only (a Hugging Face token) is scanned.
    let hf = "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";
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::from_names(&["huggingface_token"]).unwrap();
    let body = format!(r#"{{"tools":[{{"{hf}":1}}]}}"#);
    let o = inspect(
        &scanner,
        &set,
        Request { content_type: None, body: body.as_bytes(), redact: false, salt: b"" },
    );
    assert_eq!(o.findings.len(), 1, "{:?}", o.findings);
    assert!(!o.findings[0].path.contains("hf_"), "the key is not in the path");
    // A multipart part's name reaches the server: scanned, and kept out of paths.
    let body = format!(
        "--B\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\nx\r\n--B--\r\n",
        CARD.replace(' ', "")
    );
    let o = run("multipart/form-data; boundary=B", body.as_bytes(), false);
    assert!(o.findings.iter().any(|f| f.detector == "credit_card"), "{:?}", found(&o));
    assert!(!format!("{:?}{:?}", o.findings, o.unscanned).contains("4111"), "{:?}", o.findings);
    // JSON the reader refuses but a lenient server reads: its escapes hide nothing.
    let nan = r#"{"temperature": NaN, "messages":[{"role":"user","content":"\u0034\u0031\u0031\u0031 1111 1111 1111"}]}"#;
    let o = run("application/json", nan.as_bytes(), true);
    assert!(o.findings.iter().any(|f| f.detector == "credit_card"), "{:?}", found(&o));
    assert!(!o.unredactable.is_empty(), "found behind escapes: refused under redaction");
    // File data inside file data inside file data: the nesting is counted once for all.
    let mut inner = serde_json::json!({"text": format!("card {CARD}")}).to_string();
    for _ in 0..12 {
        inner =
            serde_json::json!({"file_data": STANDARD.encode(gzip(inner.as_bytes()))}).to_string();
    }
    let o = run("application/json", inner.as_bytes(), false);
    assert!(
        o.unscanned.iter().any(|u| u.reason.contains("nested too deeply")),
        "bounded: {:?}",
        o.unscanned_text()
    );
}

#[test]
fn media_keys_hold_media_or_text() {
    // A `data` value that is not base64 media is text: scanned, not called unscanned.
    let o = run("application/json", br#"{"purpose":"batch","data":"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"}"#, false);
    assert!(o.unscanned.is_empty() && o.findings.is_empty(), "{:?}", o.unscanned_text());
    let o = run(
        "application/json",
        format!(r#"{{"data":"é{}card {CARD}"}}"#, "x".repeat(70)).as_bytes(),
        false,
    );
    card_at(&o, "$.data");
    // Audio under `data` is audio.
    let wav = STANDARD.encode(b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0");
    let o = run(
        "application/json",
        format!(r#"{{"input_audio":{{"data":"{wav}","format":"wav"}}}}"#).as_bytes(),
        false,
    );
    assert_eq!(o.unscanned_text(), ["$.input_audio.data(base64) (WAV audio)"]);
}
