//! The link between a Sluice data plane and `sluice-control`, over a Unix socket.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes of JSON, one message
//! each ([`Up`] from the data plane, [`Down`] from control). The first message each way names
//! the protocol version ([`PROTO_VERSION`]); a peer speaking another version is refused with
//! a reason, never half-understood.
//!
//! The conversation:
//! 1. the data plane connects and sends [`Up::Hello`] (its name, the next sequence number it
//!    will use, the SHA-256 of the rule text it enforces);
//! 2. control answers [`Down::Welcome`] with the highest sequence number it has stored for
//!    that data plane (so a replay can skip what is already there), then [`Down::Policy`] with
//!    the current rule set and [`Down::Identities`] with the identity feed;
//! 3. the data plane sends [`Up::Records`] (each record carries its `seq`) and control answers
//!    [`Down::Ack`] once they are stored; the data plane forgets its spooled copies up to it;
//! 4. every later push is a [`Down::Policy`], [`Down::Identities`] or [`Down::Keys`] (the
//!    brokered provider keys, sent on connect too), acknowledged by [`Up::PolicyAck`] /
//!    [`Up::IdentitiesAck`] / [`Up::KeysAck`];
//! 5. [`Down::Usage`] (the fleet's quota counts, on connect and as they change) needs no
//!    answer;
//! 6. a held request goes up as [`Up::Held`]; control answers with [`Down::Decision`], or the
//!    data plane ends the wait with [`Up::HoldEnded`].
//!
//! Everything here is pure: [`encode`] writes a frame into a buffer, [`Decoder`] takes bytes
//! as they arrive and yields whole messages, bounded by [`MAX_FRAME`].

mod approval;

pub use approval::{Decision, FindingCount, Grant, HoldTicket};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Version of the messages below. Bumped on any incompatible change (2: [`Down::Keys`],
/// which a version-1 data plane could not read; 3: [`Down::Usage`], [`Up::Held`],
/// [`Down::Decision`]).
pub const PROTO_VERSION: u32 = 3;

/// Largest frame either side accepts (a policy with large dictionaries, or a batch of
/// records). A longer length prefix is an error, not an allocation.
pub const MAX_FRAME: usize = 64 << 20;

/// Messages from the data plane to control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Up {
    /// First message of a connection.
    Hello {
        /// [`PROTO_VERSION`] of the sender.
        proto: u32,
        /// Name of the data plane (unique per control daemon; records are de-duplicated per
        /// name and sequence number).
        dataplane: String,
        /// Sequence number of the next record the data plane will emit.
        next_seq: u64,
        /// Version of the pushed policy in force, if it came from control.
        policy_version: Option<i64>,
        /// Hex SHA-256 of the rule text in force.
        policy_sha256: String,
    },
    /// Records (flow, request, stats), each a JSON object with a `seq` member, in sequence
    /// order.
    Records {
        /// The records.
        records: Vec<Value>,
    },
    /// Answer to [`Down::Policy`].
    PolicyAck {
        /// The version pushed.
        version: i64,
        /// `None`: compiled and in force. `Some`: why it was refused (the old policy stays).
        error: Option<String>,
    },
    /// Answer to [`Down::Identities`].
    IdentitiesAck {
        /// The generation pushed.
        generation: u64,
        /// Entries now in force.
        entries: usize,
    },
    /// Answer to [`Down::Keys`].
    KeysAck {
        /// The generation pushed.
        generation: u64,
        /// Provider keys now held.
        keys: usize,
    },
    /// A request waits for a reviewer (sent again after a reconnect while it waits).
    Held {
        /// What the reviewer sees.
        ticket: Box<HoldTicket>,
    },
    /// A held request stopped waiting without a decision.
    HoldEnded {
        /// Its id.
        id: String,
        /// `timeout` (refused) or `gone` (the client left).
        outcome: String,
    },
}

/// Messages from control to the data plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Down {
    /// Answer to [`Up::Hello`].
    Welcome {
        /// [`PROTO_VERSION`] of control.
        proto: u32,
        /// Highest sequence number stored for this data plane, if any.
        last_seq: Option<u64>,
    },
    /// The hello was refused (wrong version, name already connected); the link closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// A rule set to compile and enforce (replacing the current one whole).
    Policy {
        /// Its version in control's rule store.
        version: i64,
        /// The rule text (TOML).
        text: String,
    },
    /// The whole identity feed (replacing the previous one).
    Identities {
        /// Increases with every change.
        generation: u64,
        /// The entries.
        entries: Vec<Identity>,
    },
    /// Records up to this sequence number are stored; their spooled copies may go.
    Ack {
        /// Highest stored sequence number of the acknowledged batch.
        upto: u64,
    },
    /// The brokered provider keys and the virtual keys (replacing the previous ones whole).
    /// The data plane holds them in memory only.
    Keys {
        /// Increases with every change.
        generation: u64,
        /// Provider keys by name.
        keys: Vec<BrokerKey>,
        /// Virtual keys control issued.
        virtual_keys: Vec<VirtualKey>,
    },
    /// What every quota subject used in the current windows, as control stored it from every
    /// data plane's records (replacing the previous push; not acknowledged). A data plane
    /// counts against the larger of its own count and this one.
    Usage {
        /// The counts.
        counts: Vec<UsageCount>,
    },
    /// A reviewer decided on a held request (sent to every data plane: an approval for a
    /// while applies on each).
    Decision {
        /// The decision.
        decision: Decision,
    },
}

/// One quota subject's use in one window (see [`Down::Usage`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCount {
    /// `user:…`, `identity:…` or `key:…`.
    pub subject: String,
    /// `minute`, `hour` or `day`.
    pub window: String,
    /// Start of the window (Unix seconds).
    pub start: u64,
    /// Requests admitted.
    pub requests: u64,
    /// Tokens their responses reported.
    pub tokens: u64,
}

/// A provider key the appliance sends upstream for rules that name it (`broker_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerKey {
    /// Its name.
    pub name: String,
    /// The key.
    pub secret: Secret,
}

/// A key control issued to one user: presented by a client in place of a provider key, it
/// names the user (and, if set, the only identity it may be used from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualKey {
    /// Its id (shown in records; not the key).
    pub id: String,
    /// Hex SHA-256 of the key (the key itself is shown once, at issue, and kept nowhere).
    pub sha256: String,
    /// The user it was issued to.
    pub user: String,
    /// The identity it may be used from, if restricted.
    #[serde(default)]
    pub identity: Option<String>,
}

/// A secret (a provider key): serialised as its text, never shown by `Debug`, wiped from
/// memory when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    /// The secret's text, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Who sits behind an address, as an identity feed said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The address.
    pub ip: std::net::IpAddr,
    /// User name.
    pub user: String,
    /// Groups (a group naming a declared identity places the source in it).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Unix seconds after which the entry no longer applies; `None` never.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The length prefix is beyond [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The frame is not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Appends `msg` as one frame to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), LinkError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *out, msg).map_err(|e| LinkError::Malformed(e.to_string()))?;
    finish_frame(out, start)
}

/// Writes the length prefix of the frame begun at `start` (or takes the frame back when it is
/// too long).
fn finish_frame(out: &mut Vec<u8>, start: usize) -> Result<(), LinkError> {
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(LinkError::TooLarge(len));
    }
    let len = u32::try_from(len).map_err(|_| LinkError::TooLarge(len))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends an [`Up::Records`] frame whose records are JSON texts (one object each, as the
/// data plane spools them), written as they are instead of being parsed into values and
/// serialised again. The frame decodes exactly as `Up::Records` with those records; the caller
/// vouches that each text is one JSON object.
pub fn encode_records(records: &[&str], out: &mut Vec<u8>) -> Result<(), LinkError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(br#"{"type":"records","records":["#);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(b"]}");
    finish_frame(out, start)
}

/// Incremental frame reader: [`Decoder::push`] the bytes as they come, then take messages
/// with [`Decoder::message`] until it returns `Ok(None)`. After an error the link must close.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, LinkError> {
        let Some(body) = self.frame()? else { return Ok(None) };
        let msg = serde_json::from_slice(body).map_err(|e| LinkError::Malformed(e.to_string()))?;
        self.pos += 4 + body.len();
        Ok(Some(msg))
    }

    /// The next whole message from a data plane, its records left as the JSON texts they
    /// came as ([`UpMessage::Records`]): the receiver reads what it needs of each and stores
    /// the text, instead of building a value tree per record and serialising it again.
    pub fn up_message(&mut self) -> Result<Option<UpMessage>, LinkError> {
        let Some(body) = self.frame()? else { return Ok(None) };
        let malformed = |e: serde_json::Error| LinkError::Malformed(e.to_string());
        let peek: RecordsPeek<'_> = serde_json::from_slice(body).map_err(malformed)?;
        let msg = match (peek.kind.as_ref(), peek.records) {
            ("records", Some(records)) => UpMessage::Records(records),
            _ => UpMessage::Other(serde_json::from_slice(body).map_err(malformed)?),
        };
        self.pos += 4 + body.len();
        Ok(Some(msg))
    }

    /// The body of the next whole frame, if it is all here.
    fn frame(&self) -> Result<Option<&[u8]>, LinkError> {
        let rest = &self.buf[self.pos..];
        let Some(head) = rest.first_chunk::<4>() else { return Ok(None) };
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX_FRAME {
            return Err(LinkError::TooLarge(len));
        }
        Ok(rest.get(4..4 + len))
    }
}

/// A message from a data plane as [`Decoder::up_message`] reads it.
#[derive(Debug)]
pub enum UpMessage {
    /// [`Up::Records`], each record the JSON text it came as (validated JSON, not yet
    /// known to be an object).
    Records(Vec<Box<RawValue>>),
    /// Any other message.
    Other(Up),
}

/// What [`Decoder::up_message`] reads first: the type, and the records left as text.
#[derive(Deserialize)]
struct RecordsPeek<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    records: Option<Vec<Box<RawValue>>>,
}

#[cfg(test)]
mod tests {
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
            Up::Records { records: vec![json!({"seq": 7, "type": "flow"}), json!({"seq": 8})] },
            Up::PolicyAck { version: 4, error: Some("line 3".into()) },
            Up::IdentitiesAck { generation: 2, entries: 10 },
            Up::KeysAck { generation: 3, keys: 1 },
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
    }

    #[test]
    fn records_read_as_text_other_messages_whole() {
        let mut wire = Vec::new();
        encode_records(&[r#"{"seq":7,"type":"flow","sni":"a\\u00e9"}"#, r#"{"seq":8}"#], &mut wire)
            .unwrap();
        for m in sample() {
            encode(&m, &mut wire).unwrap();
        }
        let mut d = Decoder::new();
        d.push(&wire);
        let Some(UpMessage::Records(r)) = d.up_message().unwrap() else { panic!("records") };
        let texts: Vec<&str> = r.iter().map(|r| r.get()).collect();
        assert_eq!(texts, [r#"{"seq":7,"type":"flow","sni":"a\\u00e9"}"#, r#"{"seq":8}"#]);
        for want in sample() {
            match d.up_message().unwrap() {
                Some(UpMessage::Other(m)) => assert_eq!(m, want),
                Some(UpMessage::Records(r)) => {
                    let values: Vec<Value> =
                        r.iter().map(|r| serde_json::from_str(r.get()).unwrap()).collect();
                    assert_eq!(Up::Records { records: values }, want);
                }
                None => panic!("a message is missing"),
            }
        }
        assert_eq!(d.pending(), 0);
        // Broken frames are errors, as with `message`.
        let mut d = Decoder::new();
        d.push(b"\0\0\0\x0b{\"type\":\"rec");
        assert!(matches!(d.up_message(), Err(LinkError::Malformed(_))));
        let mut d = Decoder::new();
        d.push(b"\0\0\0\x1d{\"type\":\"records\",\"records\":[}");
        assert!(d.up_message().is_err());
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

    #[test]
    fn raw_records_frame_is_the_typed_one() {
        let texts = [r#"{"seq":7,"type":"flow","sni":"api.openai.com"}"#, r#"{"seq":8,"n":[1,2]}"#];
        let mut raw = Vec::new();
        encode_records(&texts, &mut raw).unwrap();
        let records = texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect();
        let mut typed = Vec::new();
        encode(&Up::Records { records }, &mut typed).unwrap();
        assert_eq!(raw, typed);
        let mut empty = Vec::new();
        encode_records(&[], &mut empty).unwrap();
        let mut d = Decoder::default();
        d.push(&empty);
        assert_eq!(d.message::<Up>().unwrap(), Some(Up::Records { records: vec![] }));
    }
}
