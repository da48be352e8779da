use super::*;
use serde_json::json;

#[test]
fn a_recording_is_read_in_one_pass_its_sealed_bytes_borrowed() {
    let text = r#"{"seq":3,"type":"recording","ts_ms":9,"id":"rec_1","method":"POST","bytes":40,"previous_response":"resp_0","sealed":{"alg":"a","data":"QUJD"}}"#;
    let r = Row::read(text, "dp").unwrap();
    let f = r.recording.as_deref().unwrap();
    assert_eq!((&*f.id, f.bytes, f.previous_response.as_deref()), ("rec_1", 40, Some("resp_0")));
    assert!(matches!(f.sealed, Cow::Borrowed(r#"{"alg":"a","data":"QUJD"}"#)));
    assert!(r.json.is_empty(), "not copied");
    // Read through a value tree (a duplicate key), the same.
    let dup = text.replace(r#""seq":3,"#, r#""seq":3,"seq":3,"#);
    let r = Row::read(&dup, "dp").unwrap();
    assert_eq!(r.recording.as_deref().unwrap().id, "rec_1");
    // Without its id or sealed bytes: no recording to store.
    let r = Row::read(r#"{"seq":4,"type":"recording","id":"rec_2","sealed":"x"}"#, "dp");
    assert!(r.unwrap().recording.is_none());
}

#[test]
fn reads_fields_borrowed_and_adds_the_data_plane() {
    let text = r#"{"seq":7,"type":"request","ts_ms":12,"identity":"fin\u00e9","sni":"api.openai.com","verdict":"block","dlp_findings":[{"detector":"credit_card","count":2,"paths":["$.a"]},{"detector":"iban"}],"extra":{"x":[1,2]}}"#;
    let r = Row::read(text, "dp\"1").unwrap();
    assert_eq!((r.seq, r.kind, r.ts_ms), (7, RecordKind::Request, 12));
    assert_eq!(r.identity.as_deref(), Some("finé"));
    assert!(matches!(r.sni, Some(Cow::Borrowed("api.openai.com"))));
    assert_eq!(r.user, None);
    assert_eq!(r.findings, vec![("credit_card".into(), 2), ("iban".into(), 1)]);
    assert_eq!(r.detectors().as_deref(), Some(",credit_card,iban,"));
    let stored: Value = serde_json::from_str(&r.json).unwrap();
    let mut want: Value = serde_json::from_str(text).unwrap();
    want["dataplane"] = json!("dp\"1");
    assert_eq!(stored, want);
    let r = Row::read(
        r#"{"seq":8,"type":"request","model":"gpt-4o","quota":"user:a","input_tokens":3,"output_tokens":4}"#,
        "dp",
    )
    .unwrap();
    assert_eq!((r.model.as_deref(), r.quota.as_deref()), (Some("gpt-4o"), Some("user:a")));
    assert_eq!(r.tokens, Tokens { input: 3, output: 4, cached: 0 });
}

#[test]
fn odd_records_are_read_as_a_generic_reader_would() {
    // Its own `dataplane` is replaced, not duplicated.
    let r = Row::read(r#"{"seq":1,"type":"flow","dataplane":"forged"}"#, "dp").unwrap();
    assert_eq!(serde_json::from_str::<Value>(&r.json).unwrap()["dataplane"], "dp");
    assert_eq!(r.json.matches("dataplane").count(), 1);
    // Duplicate keys: the last wins, as in a value tree.
    let r = Row::read(r#"{"seq":1,"verdict":"allow","verdict":"block"}"#, "dp").unwrap();
    assert_eq!(r.verdict.as_deref(), Some("block"));
    // A field of another type does not lose the record.
    let r = Row::read(r#"{"seq":2,"type":"flow","rule":5,"ts_ms":-1}"#, "dp").unwrap();
    assert_eq!((r.seq, r.kind, r.rule, r.ts_ms), (2, RecordKind::Flow, None, 0));
    // Nothing to store without a sequence number, or when it is not an object.
    for bad in [r#"{"type":"flow"}"#, r#"{"seq":"1"}"#, "[1]", "7", "{"] {
        assert_eq!(Row::read(bad, "dp"), None, "{bad}");
    }
    assert_eq!(Row::read(r#"{"seq":3,"type":"stats"}"#, "dp").unwrap().kind, RecordKind::Stats);
}
