//! The link between a Sluice data plane and `sluice-control`, over a Unix socket.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes, one message each: JSON
//! ([`Up`] from the data plane, [`Down`] from control), except the data plane's records
//! ([`encode_records`]), which go as they were spooled, each behind its length, so that
//! control finds them without reading every byte of every record twice. The first message each way names
//! the protocol version ([`PROTO_VERSION`]); a peer speaking another version is refused with
//! a reason, never half-understood.
//!
//! The conversation:
//! 1. the data plane connects and sends [`Up::Hello`] (its name, the next sequence number it
//!    will use, the SHA-256 of the rule text it enforces);
//! 2. control answers [`Down::Welcome`] with the highest sequence number it has stored for
//!    that data plane (so a replay can skip what is already there), then [`Down::Policy`] with
//!    the current rule set and [`Down::Identities`] with the identity feed;
//! 3. the data plane sends records ([`encode_records`]; each carries its `seq`) and control answers
//!    [`Down::Ack`] once they are stored; the data plane forgets its spooled copies up to it;
//! 4. every later push is a [`Down::Policy`], [`Down::Identities`] or [`Down::Keys`] (the
//!    brokered provider keys, sent on connect too), acknowledged by [`Up::PolicyAck`] /
//!    [`Up::IdentitiesAck`] / [`Up::KeysAck`];
//! 5. [`Down::Usage`] (the fleet's quota counts, on connect and as they change) needs no
//!    answer;
//! 6. a held request goes up as [`Up::Held`]; control answers with [`Down::Decision`], or the
//!    data plane ends the wait with [`Up::HoldEnded`].
//!
//! Everything here is pure: [`encode`] and [`encode_records`] write a frame into a buffer,
//! [`Decoder`] takes bytes as they arrive and yields whole messages, bounded by [`MAX_FRAME`].

mod approval;

pub use approval::{Decision, FindingCount, Grant, HoldTicket};

use serde::{Deserialize, Serialize};

/// Version of the messages below. Bumped on any incompatible change (2: [`Down::Keys`],
/// which a version-1 data plane could not read; 3: [`Down::Usage`], [`Up::Held`],
/// [`Down::Decision`]; 4: records framed by length, not as a JSON array; 5:
/// [`Up::PolicyInForce`]).
pub const PROTO_VERSION: u32 = 5;

/// First byte of a records frame (a JSON message begins with `{`).
const RECORDS_TAG: u8 = 0;

/// Most records in one frame a decoder takes (a data plane sends 2,000 at most).
pub const MAX_RECORDS: usize = 100_000;

/// Largest frame either side accepts (a policy with large dictionaries, or a batch of
/// records). A longer length prefix is an error, not an allocation.
pub const MAX_FRAME: usize = 64 << 20;

/// Largest records frame whose memory a [`Decoder`] keeps for the next ([`Decoder::recycle`]).
pub const KEPT_FRAME: usize = 17 << 20;

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
    /// Answer to [`Down::Policy`].
    PolicyAck {
        /// The version pushed.
        version: i64,
        /// `None`: compiled and in force. `Some`: why it was refused (the old policy stays).
        error: Option<String>,
    },
    /// The policy in force changed: by a push (sent before its [`Up::PolicyAck`]), or by a
    /// rule file loaded locally (SIGHUP), which control did not send.
    PolicyInForce {
        /// Version of the pushed policy in force; `None`: a local rule file.
        policy_version: Option<i64>,
        /// Hex SHA-256 of the rule text in force.
        policy_sha256: String,
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
        /// Id of the DLP salt in force (the run's own until control pushed one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dlp_salt: Option<String>,
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
        /// The deployment's DLP salt (findings' hashes), when control holds one; a data
        /// plane without one hashes with a salt of its own run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dlp_salt: Option<DlpSalt>,
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

/// The salt DLP findings are hashed with, one per deployment (ARCHITECTURE.md, "The DLP
/// salt").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlpSalt {
    /// Its id (`salt:` and 12 hex digits), as records name it.
    pub id: String,
    /// The salt, as hex digits.
    pub salt: Secret,
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

/// Appends a records frame: records (flow, request, recording, stats…) in sequence order,
/// each a JSON object as UTF-8 text with a `seq` member, as the data plane spools them. They
/// go as they are, each behind its 4-byte big-endian length, never parsed and written again;
/// [`Decoder::up_message`] gives them back as [`UpMessage::Records`] (and refuses a frame
/// whose records are not UTF-8 objects).
pub fn encode_records<I>(records: I, out: &mut Vec<u8>) -> Result<(), LinkError>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(RECORDS_TAG);
    for r in records {
        let r = r.as_ref();
        let Ok(len) = u32::try_from(r.len()) else {
            out.truncate(start);
            return Err(LinkError::TooLarge(r.len()));
        };
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(r);
    }
    finish_frame(out, start)
}

/// The records of a records frame (see [`encode_records`]), each the text it came as: known to
/// be UTF-8 and to look like one JSON object (`{…}`), not parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    text: String,
    /// Where each record is in `text`.
    spans: Vec<(u32, u32)>,
}

impl Records {
    /// Reads a records frame's body after its tag: length-prefixed records up to its end.
    /// `spare` is an earlier frame's, whose memory is reused.
    fn read(body: &[u8], spare: Records) -> Result<Records, LinkError> {
        let malformed = |why: &str| LinkError::Malformed(format!("records frame: {why}"));
        let Records { mut text, mut spans } = spare;
        text.clear();
        spans.clear();
        text.reserve_exact(body.len());
        let mut at = 0;
        while at < body.len() {
            let (len, rest) = prefixed(&body[at..]).ok_or_else(|| malformed("a cut length"))?;
            let start = at + 4;
            let r = rest.get(..len).ok_or_else(|| malformed("a cut record"))?;
            if r.len() < 2 || r[0] != b'{' || r[len - 1] != b'}' {
                return Err(malformed("a record is not a JSON object"));
            }
            if spans.len() == MAX_RECORDS {
                return Err(malformed("too many records"));
            }
            let from = text.len();
            text.push_str(std::str::from_utf8(r).map_err(|_| malformed("not UTF-8"))?);
            // Both within a frame, itself under MAX_FRAME (< 2^32).
            spans.push((from as u32, text.len() as u32));
            at = start + len;
        }
        Ok(Records { text, spans })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Each record's text, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().filter_map(|&(a, b)| self.text.get(a as usize..b as usize))
    }
}

/// Incremental frame reader: [`Decoder::push`] the bytes as they come, then take messages
/// with [`Decoder::message`] until it returns `Ok(None)`. After an error the link must close.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    /// A records frame given back ([`Decoder::recycle`]): the next one is read into its memory.
    spare: Records,
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

    /// Gives back a records frame the receiver is done with: the next is read into its memory
    /// (a frame can be megabytes; memory allocated afresh for each is also faulted in afresh).
    /// One is kept, up to [`KEPT_FRAME`] (a data plane's batches stay under it; a larger
    /// frame's memory goes).
    pub fn recycle(&mut self, records: Records) {
        if records.text.capacity() <= KEPT_FRAME {
            self.spare = records;
        }
    }

    /// Bytes received but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, LinkError> {
        let Some(body) = frame_in(&self.buf[self.pos..])? else { return Ok(None) };
        let msg = serde_json::from_slice(body).map_err(|e| LinkError::Malformed(e.to_string()))?;
        self.pos += 4 + body.len();
        Ok(Some(msg))
    }

    /// The next whole message from a data plane: records as the texts they came as
    /// ([`UpMessage::Records`]; the receiver reads what it needs of each and stores the text),
    /// any other message whole.
    pub fn up_message(&mut self) -> Result<Option<UpMessage>, LinkError> {
        let Some(body) = frame_in(&self.buf[self.pos..])? else { return Ok(None) };
        let spare = &mut self.spare;
        let msg = match body.split_first() {
            Some((&RECORDS_TAG, records)) => {
                UpMessage::Records(Records::read(records, std::mem::take(spare))?)
            }
            _ => UpMessage::Other(
                serde_json::from_slice(body).map_err(|e| LinkError::Malformed(e.to_string()))?,
            ),
        };
        self.pos += 4 + body.len();
        Ok(Some(msg))
    }
}

/// The body of the first frame in `buf`, if it is all there.
fn frame_in(buf: &[u8]) -> Result<Option<&[u8]>, LinkError> {
    let Some((len, rest)) = prefixed(buf) else { return Ok(None) };
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    Ok(rest.get(..len))
}

/// A 4-byte big-endian length and the bytes after it (frames, and records in a records
/// frame), `None` when the length is cut.
fn prefixed(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head) as usize, rest))
}

/// A message from a data plane as [`Decoder::up_message`] reads it.
#[derive(Debug, PartialEq)]
pub enum UpMessage {
    /// Records ([`encode_records`]).
    Records(Records),
    /// Any other message.
    Other(Up),
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
