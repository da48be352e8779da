use super::*;
use serde_json::json;

fn sample() -> Vec<Up> {
    vec![
        Up::Hello {
            proto: PROTO_VERSION,
            dataplane: "dp1".into(),
            next_seq: 7,
            policy_version: Some(3),
            policy_sha256: "ab".repeat(32),
        },
        Up::PolicyAck { version: 4, error: Some("line 3".into()) },
        Up::PolicyInForce { policy_version: None, policy_sha256: "cd".repeat(32) },
        Up::IdentitiesAck { generation: 2, entries: 10 },
        Up::KeysAck { generation: 3, keys: 1, dlp_salt: Some("salt:0123456789ab".into()) },
    ]
}

#[test]
fn keys_travel_whole_and_never_show_in_debug() {
    let m = Down::Keys {
        generation: 4,
        keys: vec![BrokerKey { name: "prod".into(), secret: Secret::new("sk-real-1".into()) }],
        virtual_keys: vec![VirtualKey {
            id: "vk_1".into(),
            sha256: "00".repeat(32),
            user: "alice@corp".into(),
            identity: Some("finance".into()),
        }],
        dlp_salt: Some(DlpSalt {
            id: "salt:0123456789ab".into(),
            salt: Secret::new("5a".repeat(32)),
        }),
    };
    let mut wire = Vec::new();
    encode(&m, &mut wire).unwrap();
    let mut d = Decoder::new();
    d.push(&wire);
    let got: Down = d.message().unwrap().unwrap();
    assert_eq!(got, m);
    let Down::Keys { keys, .. } = &got else { panic!("keys") };
    assert_eq!(keys[0].secret.expose(), "sk-real-1");
    assert!(!format!("{got:?}").contains("sk-real-1"));
    assert!(!format!("{got:?}").contains(&"5a".repeat(32)));
    // A push without a salt (an older control) still reads.
    let old = br#"{"type":"keys","generation":1,"keys":[],"virtual_keys":[]}"#;
    let got: Down = serde_json::from_slice(old).unwrap();
    assert!(matches!(got, Down::Keys { dlp_salt: None, .. }));
}

#[test]
fn records_read_as_text_other_messages_whole() {
    let mut wire = Vec::new();
    let long = format!(r#"{{"seq":9,"pad":"{}é"}}"#, "x".repeat(140));
    encode_records(
        &[r#"{"seq":7,"type":"flow","sni":"a\\u00e9"}"#, r#"{"seq":8}"#, &long],
        &mut wire,
    )
    .unwrap();
    for m in sample() {
        encode(&m, &mut wire).unwrap();
    }
    let mut d = Decoder::new();
    d.push(&wire);
    let Some(UpMessage::Records(r)) = d.up_message().unwrap() else { panic!("records") };
    let texts: Vec<&str> = r.iter().collect();
    assert_eq!(texts, [r#"{"seq":7,"type":"flow","sni":"a\\u00e9"}"#, r#"{"seq":8}"#, &long]);
    assert_eq!(r.len(), 3, "a length byte past 0x7f is no text");
    for want in sample() {
        assert_eq!(d.up_message().unwrap(), Some(UpMessage::Other(want)));
    }
    assert_eq!(d.pending(), 0);
    // A frame given back lends its memory to the next, and nothing of itself.
    d.recycle(r);
    let mut wire = Vec::new();
    encode_records([r#"{"seq":10}"#], &mut wire).unwrap();
    d.push(&wire);
    let Some(UpMessage::Records(r)) = d.up_message().unwrap() else { panic!("records") };
    assert_eq!(r.iter().collect::<Vec<_>>(), [r#"{"seq":10}"#]);
    // Broken frames are errors, as with `message`.
    let mut d = Decoder::new();
    d.push(b"\0\0\0\x0b{\"type\":\"rec");
    assert!(matches!(d.up_message(), Err(LinkError::Malformed(_))));
    let bad: [&[u8]; 6] = [
        b"\0\0\0\x05{}",            // a length past the frame
        b"\0\0\0\x02{}\0\0",        // a cut length
        b"\0\0\0\x02[]",            // not an object
        b"\0\0\0\0",                // empty
        b"\0\0\0\x03{\xff}",        // not UTF-8
        b"\0\0\0\x01{\0\0\0\x02{}", // a record cut by the next length
    ];
    for body in bad {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
        wire.push(RECORDS_TAG);
        wire.extend_from_slice(body);
        let mut d = Decoder::new();
        d.push(&wire);
        assert!(matches!(d.up_message(), Err(LinkError::Malformed(_))), "{body:?}");
    }
    // Too many records: refused, not allocated for.
    let many = vec!["{}"; MAX_RECORDS + 1];
    let mut wire = Vec::new();
    encode_records(&many, &mut wire).unwrap();
    let mut d = Decoder::new();
    d.push(&wire);
    assert!(matches!(d.up_message(), Err(LinkError::Malformed(_))));
    // No records: an empty batch.
    let mut wire = Vec::new();
    encode_records(std::iter::empty::<&str>(), &mut wire).unwrap();
    let mut d = Decoder::new();
    d.push(&wire);
    assert_eq!(d.up_message().unwrap(), Some(UpMessage::Records(Records::default())));
}

#[test]
fn round_trip_on_every_split() {
    let mut wire = Vec::new();
    for m in sample() {
        encode(&m, &mut wire).unwrap();
    }
    for split in 0..=wire.len() {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for part in [&wire[..split], &wire[split..]] {
            d.push(part);
            while let Some(m) = d.message::<Up>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, sample(), "split at {split}");
        assert_eq!(d.pending(), 0);
    }
}

#[test]
fn byte_by_byte() {
    let down = vec![
        Down::Welcome { proto: 1, last_seq: None },
        Down::Policy { version: 1, text: "[defaults]\n".into() },
        Down::Identities {
            generation: 1,
            entries: vec![Identity {
                ip: "10.0.0.1".parse().unwrap(),
                user: "u".into(),
                groups: vec!["finance".into()],
                expires_at: Some(5),
            }],
        },
        Down::Ack { upto: 9 },
    ];
    let mut wire = Vec::new();
    for m in &down {
        encode(m, &mut wire).unwrap();
    }
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in &wire {
        d.push(std::slice::from_ref(b));
        while let Some(m) = d.message::<Down>().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, down);
}

#[test]
fn hostile_frames_are_errors() {
    let mut d = Decoder::new();
    d.push(&u32::MAX.to_be_bytes());
    assert_eq!(d.message::<Up>(), Err(LinkError::TooLarge(u32::MAX as usize)));
    let mut d = Decoder::new();
    d.push(&[0, 0, 0, 2, b'{', b'}']);
    assert!(matches!(d.message::<Up>(), Err(LinkError::Malformed(_))), "no type tag");
    let mut d = Decoder::new();
    let mut wire = Vec::new();
    encode(&json!({"type": "hello", "proto": "x"}), &mut wire).unwrap();
    d.push(&wire);
    assert!(matches!(d.message::<Up>(), Err(LinkError::Malformed(_))));
}
