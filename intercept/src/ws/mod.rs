//! WebSocket messages inspected in passing (ARCHITECTURE.md, "Interception phases"): after a
//! 101, both directions are read frame by frame ([`frame`]), gathered into messages
//! ([`message`]) and inflated when permessage-deflate is in force ([`deflate`]). Each client
//! message runs the request phase of a message ([`Session::client_message`]: DLP, audio), each
//! server text message the response phase ([`Session::server_message`]: masking). A message
//! the policy leaves alone goes on as the very bytes that came; a rewritten one goes as one
//! uncompressed frame (and, where the sender keeps its compression context, every later
//! message of that direction too, since the receiver's context no longer matches the
//! sender's); a refused one closes the socket both ways with 1008 and the rule's name.
//!
//! Records: one for the connection at close (message counts each way, DLP findings), and one
//! per refused or rewritten message.

pub mod deflate;
pub mod frame;
pub mod message;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::h1::ProxyError;
use crate::phases::{MessageVerdict, RequestCtx, Session};
use crate::record::{RecordSink, RequestRecord, WsStats};
use deflate::{Deflate, Inflater};
use frame::{Side, op};
use message::{Assembler, Event, WsError};

/// Read size.
const READ: usize = 16 * 1024;

/// One direction's relay state.
struct Direction {
    asm: Assembler,
    /// The sender keeps its compression context between messages.
    takeover: bool,
    /// A message of this direction was rewritten while the sender keeps its context: every
    /// later message goes uncompressed, from its decoded form.
    reencode: bool,
    /// A close frame went this way.
    closed: bool,
}

impl Direction {
    fn new(side: Side, deflate: Deflate, max: usize) -> Self {
        let no_takeover = match side {
            Side::Client => deflate.client_no_context_takeover,
            Side::Server => deflate.server_no_context_takeover,
        };
        let inflater = deflate.enabled.then(|| Inflater::new(no_takeover));
        Direction {
            asm: Assembler::new(side, inflater, max),
            takeover: deflate.enabled && !no_takeover,
            reencode: false,
            closed: false,
        }
    }
}

/// How the relay ends.
enum End {
    /// Both sides closed, or one went away.
    Done,
    /// The engine closed the socket (code and reason sent both ways).
    Closed,
}

/// Relays a WebSocket connection after its 101 until it ends; `cbuf` and `ubuf` hold bytes
/// read past the upgrade. `ctx` is the upgrade request's context: its record is written at
/// close with what the connection carried.
#[allow(clippy::too_many_arguments)]
pub async fn relay<C, U>(
    client: &mut C,
    up: &mut U,
    cbuf: &mut Vec<u8>,
    ubuf: &mut Vec<u8>,
    session: &Session,
    deflate: Deflate,
    mut ctx: RequestCtx,
    sink: &dyn RecordSink,
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let max = usize::try_from(session.max_body).unwrap_or(usize::MAX);
    let mut relay = Relay {
        session,
        sink,
        base: ctx.rec.clone(),
        stats: WsStats { record: "connection", ..WsStats::default() },
        from_client: Direction::new(Side::Client, deflate, max),
        from_server: Direction::new(Side::Server, deflate, max),
        conn: &mut ctx.rec,
    };
    let result = match relay.run(client, up, cbuf, ubuf).await {
        // A peer that goes away once a close frame was exchanged ends the socket normally.
        Err(ProxyError::Io(_)) if relay.stats.close_code.is_some() => Ok(()),
        r => r,
    };
    let stats = relay.stats;
    ctx.rec.websocket = Some(stats);
    sink.request(session.logging(ctx));
    result
}

struct Relay<'a> {
    session: &'a Session,
    sink: &'a dyn RecordSink,
    /// The upgrade's record, the template of message records.
    base: RequestRecord,
    stats: WsStats,
    from_client: Direction,
    from_server: Direction,
    conn: &'a mut RequestRecord,
}

impl Relay<'_> {
    async fn run<C, U>(
        &mut self,
        client: &mut C,
        up: &mut U,
        cbuf: &mut Vec<u8>,
        ubuf: &mut Vec<u8>,
    ) -> Result<(), ProxyError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut client_open, mut server_open) = (true, true);
        loop {
            match self.client_events(client, up, cbuf).await? {
                Some(End::Closed) => return Ok(()),
                Some(End::Done) => client_open = false,
                None => {}
            }
            match self.server_events(client, up, ubuf).await? {
                Some(End::Closed) => return Ok(()),
                Some(End::Done) => server_open = false,
                None => {}
            }
            if !client_open && !server_open {
                return Ok(());
            }
            cbuf.reserve(READ);
            ubuf.reserve(READ);
            tokio::select! {
                r = client.read_buf(cbuf), if client_open => {
                    if r? == 0 {
                        client_open = false;
                        let _ = up.shutdown().await;
                    }
                }
                r = up.read_buf(ubuf), if server_open => {
                    if r? == 0 {
                        server_open = false;
                        let _ = client.shutdown().await;
                    }
                }
            }
            if !client_open && !server_open {
                return Ok(());
            }
        }
    }

    /// Handles the client's whole messages in `cbuf`.
    async fn client_events<C, U>(
        &mut self,
        client: &mut C,
        up: &mut U,
        cbuf: &mut Vec<u8>,
    ) -> Result<Option<End>, ProxyError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncWrite + Unpin,
    {
        loop {
            let ev = match self.from_client.asm.next(cbuf) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(e) => return self.protocol_error(client, up, &e, "client").await,
            };
            match ev {
                Event::Control { opcode, raw, payload } => {
                    if opcode == op::CLOSE {
                        self.note_close(&payload);
                        self.from_client.closed = true;
                    }
                    up.write_all(&raw).await?;
                    up.flush().await?;
                }
                Event::Message { opcode, compressed, raw, payload } => {
                    let mut rec = self.message_record();
                    let text = opcode == op::TEXT;
                    if text && let Some(c) = self.conn.capture.as_mut() {
                        c.message("client", &payload);
                    }
                    let s = self.session;
                    match s.client_message(text, &payload, &mut rec, &mut self.stats) {
                        MessageVerdict::Forward => {
                            crate::dlp::merge_findings(self.conn, &rec);
                            let out = relayed(&self.from_client, opcode, &payload, true);
                            up.write_all(out.as_deref().unwrap_or(&raw)).await?;
                        }
                        MessageVerdict::Replace(new) => {
                            crate::dlp::merge_findings(self.conn, &rec);
                            self.stats.rewritten += 1;
                            self.from_client.reencode |= compressed && self.from_client.takeover;
                            let mut out = Vec::with_capacity(new.len() + 14);
                            frame::write(&mut out, opcode, false, &new, Some(random_mask()));
                            up.write_all(&out).await?;
                            self.sink.request(rec);
                        }
                        MessageVerdict::Refuse(r) => {
                            crate::dlp::merge_findings(self.conn, &rec);
                            let reason = match &r.rule {
                                Some(rule) => format!("{} (rule {rule})", r.code),
                                None => r.code.to_owned(),
                            };
                            self.session.refused_record(&r, &mut rec);
                            self.sink.request(rec);
                            self.session.refused_record(&r, self.conn);
                            close_both(client, up, 1008, &reason).await?;
                            self.stats.close_code = Some(1008);
                            return Ok(Some(End::Closed));
                        }
                    }
                    up.flush().await?;
                }
            }
        }
    }

    /// Handles the server's whole messages in `ubuf`.
    async fn server_events<C, U>(
        &mut self,
        client: &mut C,
        up: &mut U,
        ubuf: &mut Vec<u8>,
    ) -> Result<Option<End>, ProxyError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncWrite + Unpin,
    {
        loop {
            let ev = match self.from_server.asm.next(ubuf) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(e) => return self.protocol_error(client, up, &e, "server").await,
            };
            match ev {
                Event::Control { opcode, raw, payload } => {
                    if opcode == op::CLOSE {
                        self.note_close(&payload);
                        self.from_server.closed = true;
                    }
                    client.write_all(&raw).await?;
                }
                Event::Message { opcode, compressed, raw, payload } => {
                    if opcode == op::TEXT
                        && let Some(c) = self.conn.capture.as_mut()
                    {
                        c.message("server", &payload);
                    }
                    let masked = if opcode == op::TEXT {
                        self.session.server_message(&payload, self.conn, &mut self.stats)
                    } else {
                        self.stats.messages_in += 1;
                        None
                    };
                    match masked {
                        Some(new) => {
                            self.stats.rewritten += 1;
                            self.from_server.reencode |= compressed && self.from_server.takeover;
                            let mut out = Vec::with_capacity(new.len() + 10);
                            frame::write(&mut out, opcode, false, &new, None);
                            client.write_all(&out).await?;
                        }
                        None => {
                            let out = relayed(&self.from_server, opcode, &payload, false);
                            client.write_all(out.as_deref().unwrap_or(&raw)).await?;
                        }
                    }
                }
            }
            client.flush().await?;
            if self.from_server.closed && self.from_client.closed {
                return Ok(Some(End::Done));
            }
        }
    }

    /// A record for one message, from the upgrade's.
    fn message_record(&self) -> RequestRecord {
        let mut r = self.base.clone();
        r.ts_ms = crate::record::now_ms();
        r.dlp_findings.clear();
        r.dlp_salt = None;
        r.dlp_action = None;
        r.capture = None;
        // Counted only if the message itself is admitted (a `response.create`).
        r.quota = None;
        r
    }

    fn note_close(&mut self, payload: &[u8]) {
        if let [a, b, ..] = payload {
            self.stats.close_code.get_or_insert(u16::from_be_bytes([*a, *b]));
        }
    }

    /// A malformed stream from `who`: the socket is closed both ways with the error's code.
    async fn protocol_error<C, U>(
        &mut self,
        client: &mut C,
        up: &mut U,
        e: &WsError,
        who: &str,
    ) -> Result<Option<End>, ProxyError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncWrite + Unpin,
    {
        let code = e.close_code();
        self.conn.reason = Some(format!("WebSocket closed: the {who} sent a bad frame: {e}"));
        self.stats.close_code = Some(code);
        close_both(client, up, code, &e.to_string()).await?;
        Ok(Some(End::Closed))
    }
}

/// The bytes to relay for a message the policy left alone: `None` for its own bytes, or an
/// uncompressed frame of its payload once the direction re-encodes.
fn relayed(dir: &Direction, opcode: u8, payload: &[u8], mask: bool) -> Option<Vec<u8>> {
    if !dir.reencode {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + 14);
    frame::write(&mut out, opcode, false, payload, mask.then(random_mask));
    Some(out)
}

/// Sends a close frame with `code` and `reason` to both sides (masked toward the server, as a
/// client's frames are) and shuts both.
async fn close_both<C, U>(
    client: &mut C,
    up: &mut U,
    code: u16,
    reason: &str,
) -> Result<(), ProxyError>
where
    C: AsyncWrite + Unpin,
    U: AsyncWrite + Unpin,
{
    let payload = frame::close_payload(code, reason);
    let mut to_client = Vec::new();
    frame::write(&mut to_client, op::CLOSE, false, &payload, None);
    let mut to_server = Vec::new();
    frame::write(&mut to_server, op::CLOSE, false, &payload, Some(random_mask()));
    let _ = client.write_all(&to_client).await;
    let _ = client.flush().await;
    let _ = up.write_all(&to_server).await;
    let _ = up.flush().await;
    let _ = client.shutdown().await;
    let _ = up.shutdown().await;
    Ok(())
}

/// A fresh masking key (RFC 6455 §5.3: unpredictable).
fn random_mask() -> [u8; 4] {
    let mut k = [0u8; 4];
    let rng = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    if rng.fill(&mut k).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        k = t.to_le_bytes();
    }
    k
}
