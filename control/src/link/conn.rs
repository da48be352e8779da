//! One data plane's connection to control (ARCHITECTURE.md, "Records and the link"): its
//! hello, the checks of who it is (a TLS peer's certificate checked again once its session is
//! in place), what control sends at once (rules, identities, keys, quota counts), then the
//! records it streams, stored, acknowledged and published, and its answers to pushes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde_json::Value;
use sluice_link::{Decoder, Down, PROTO_VERSION, Up, UpMessage, encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use crate::api::AppState;
use crate::keystore::KeyPush;
use crate::record::{RecordKind, Row};

use super::{DataplaneStatus, Peer, Session, now_ms, now_s};

async fn write(w: &mut (impl AsyncWriteExt + Unpin), msg: &Down) -> std::io::Result<()> {
    let mut buf = Vec::new();
    encode(msg, &mut buf).map_err(std::io::Error::other)?;
    w.write_all(&buf).await
}

/// Reads one message, `None` at end of stream.
async fn read(
    r: &mut (impl AsyncReadExt + Unpin),
    dec: &mut Decoder,
    buf: &mut [u8],
) -> std::io::Result<Option<UpMessage>> {
    loop {
        if let Some(m) = dec.up_message().map_err(std::io::Error::other)? {
            return Ok(Some(m));
        }
        let n = r.read(buf).await?;
        if n == 0 {
            return Ok(None);
        }
        dec.push(&buf[..n]);
    }
}

/// One data plane's connection, from its hello to its end.
pub(crate) async fn connection<S>(
    stream: S,
    peer: Peer,
    state: Arc<AppState>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 256 << 10];
    let hello = tokio::time::timeout(Duration::from_secs(10), read(&mut rd, &mut dec, &mut buf))
        .await
        .map_err(|_| std::io::Error::other("no hello within 10 s"))??;
    let Some(UpMessage::Other(Up::Hello {
        proto,
        dataplane: name,
        next_seq,
        policy_version,
        policy_sha256,
    })) = hello
    else {
        return Err(std::io::Error::other("the first message was not a hello"));
    };
    let links = &state.links;
    let refuse = |reason: String| Down::Refused { reason };
    if proto != PROTO_VERSION {
        write(&mut wr, &refuse(format!("link version {proto} is not {PROTO_VERSION}"))).await?;
        return Err(std::io::Error::other(format!("{name}: link version {proto} refused")));
    }
    if let Peer::Enrolled { name: enrolled, remote, .. } = &peer
        && *enrolled != name
    {
        write(&mut wr, &refuse(format!("this certificate was issued to {enrolled}, not {name}")))
            .await?;
        return Err(std::io::Error::other(format!(
            "{remote}: the certificate of {enrolled} said hello as {name}: refused"
        )));
    }
    let last_seq = {
        let st = state.clone();
        let n = name.clone();
        tokio::task::spawn_blocking(move || lock!(st.flows).last_seq(&n))
            .await
            .map_err(std::io::Error::other)?
    };
    let last_seq = last_seq.map_err(std::io::Error::other)?;
    let conn = links.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let closer = Arc::new(Notify::new());
    let duplicate = {
        let mut sessions = lock!(links.sessions);
        let dup = sessions.contains_key(&name);
        if !dup {
            sessions.insert(
                name.clone(),
                Session {
                    conn,
                    enrolled: matches!(peer, Peer::Enrolled { .. }),
                    closer: closer.clone(),
                    tx: tx.clone(),
                    waiters: Vec::new(),
                    feed_waiters: Vec::new(),
                    key_waiters: Vec::new(),
                },
            );
        }
        dup
    };
    if duplicate {
        write(&mut wr, &refuse(format!("a data plane named {name} is already connected"))).await?;
        return Err(std::io::Error::other(format!("{name}: duplicate name refused")));
    }
    // A revocation between the handshake's check and here found no session to close: the
    // certificate is checked again now that the session is in place (a revocation from now on
    // finds it), before anything is sent.
    if let Peer::Enrolled { sha256, .. } = &peer {
        let (st, sha) = (state.clone(), sha256.clone());
        let member = tokio::task::spawn_blocking(move || lock!(st.fleet).member(&sha))
            .await
            .map_err(std::io::Error::other)?;
        if !matches!(member, Ok(Some(m)) if m.revoked_ms.is_none()) {
            {
                let mut sessions = lock!(links.sessions);
                if sessions.get(&name).is_some_and(|s| s.conn == conn) {
                    sessions.remove(&name);
                }
            }
            write(&mut wr, &refuse("its certificate was revoked".into())).await?;
            return Err(std::io::Error::other(format!("{name}: revoked while connecting")));
        }
    }
    let (transport, remote) = match &peer {
        Peer::Local => ("unix", None),
        Peer::Enrolled { remote, .. } => ("tls", Some(remote.to_string())),
    };
    tracing::info!(dataplane = %name, transport, ?remote, next_seq, ?last_seq, ?policy_version, "data plane connected");
    links.update(&name, |s| {
        *s = DataplaneStatus {
            name: name.clone(),
            connected: true,
            transport,
            remote,
            since_ms: now_ms(),
            policy_version,
            policy_sha256: Some(policy_sha256),
            last_seq,
            ..Default::default()
        };
    });
    let _ = tx.send(Down::Welcome { proto: PROTO_VERSION, last_seq });
    if let Ok(Some(v)) = lock!(state.rules).current() {
        let _ = tx.send(Down::Policy { version: v.version, text: v.text });
    }
    if let Ok(entries) = lock!(state.identities).all() {
        let generation = links.generation.load(Ordering::Relaxed);
        let _ = tx.send(Down::Identities { generation, entries });
    }
    // The generation before the keys: a change stored meanwhile gets a higher one, and the
    // data plane keeps whichever of the two is higher.
    let generation = links.current_key_generation();
    match state.key_push() {
        Ok(KeyPush { keys, virtual_keys, dlp_salt }) => {
            let _ = tx.send(Down::Keys { generation, keys, virtual_keys, dlp_salt });
        }
        Err(e) => tracing::error!(dataplane = %name, "brokered keys not sent: {e}"),
    }
    let _ = tx.send(Down::Usage { counts: state.quotas.current(now_s()) });
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write(&mut wr, &m).await.is_err() {
                break;
            }
        }
    });
    let mut writer = writer;
    let r = tokio::select! {
        r = serve_up(&mut rd, &mut dec, &mut buf, &name, &state) => r,
        () = closer.notified() => {
            // Revoked: the session is gone from the map, so the writer ends once it has said
            // why (bounded: a peer that reads nothing does not keep it).
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            Err(std::io::Error::other("its certificate was revoked: disconnected"))
        }
    };
    writer.abort();
    let replaced = {
        let mut sessions = lock!(links.sessions);
        match sessions.get(&name) {
            Some(s) if s.conn == conn => {
                sessions.remove(&name);
                false
            }
            // Another connection of the same name took over (after a revocation closed this
            // one): its status stays.
            Some(_) => true,
            None => false,
        }
    };
    if !replaced {
        links.update(&name, |s| {
            s.connected = false;
            s.since_ms = now_ms();
        });
    }
    tracing::info!(dataplane = %name, "data plane disconnected");
    r
}

async fn serve_up(
    rd: &mut (impl AsyncReadExt + Unpin),
    dec: &mut Decoder,
    buf: &mut [u8],
    name: &str,
    state: &Arc<AppState>,
) -> std::io::Result<()> {
    let links = &state.links;
    while let Some(msg) = read(rd, dec, buf).await? {
        match msg {
            UpMessage::Records(records) => {
                let (st, n) = (state.clone(), name.to_owned());
                let (batch, records) =
                    tokio::task::spawn_blocking(move || (store_batch(&st, &n, &records), records))
                        .await
                        .map_err(std::io::Error::other)?;
                dec.recycle(records);
                let batch = batch.map_err(std::io::Error::other)?;
                let Some(upto) = batch.upto else { continue };
                links.update(name, |s| {
                    s.records_received += batch.received as u64;
                    s.last_seq = s.last_seq.max(Some(upto));
                    if batch.stats.is_some() {
                        s.stats = batch.stats;
                    }
                });
                if let Some(s) = lock!(links.sessions).get(name) {
                    let _ = s.tx.send(Down::Ack { upto });
                }
            }
            UpMessage::Other(Up::PolicyAck { version, error }) => {
                match &error {
                    None => tracing::info!(dataplane = %name, version, "policy in force"),
                    Some(e) => tracing::warn!(dataplane = %name, version, "policy refused: {e}"),
                }
                links.update(name, |s| {
                    if error.is_none() {
                        s.policy_version = Some(version);
                    }
                    s.policy_error.clone_from(&error);
                });
                // Evidence of which rules a data plane enforced from when: its answer goes to
                // control's chained audit log.
                let (st, who) = (state.clone(), format!("dataplane:{name}"));
                let detail = serde_json::json!({
                    "dataplane": name, "version": version,
                    "status": if error.is_none() { "applied" } else { "refused" }, "error": error,
                });
                let written = tokio::task::spawn_blocking(move || {
                    lock!(st.rules).audit(&who, "rules.ack", &detail.to_string(), Some(version))
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::error!(dataplane = %name, version, "policy acknowledgement not audited: {e}");
                }
                if let Some(s) = lock!(links.sessions).get_mut(name) {
                    let (done, keep): (Vec<_>, Vec<_>) =
                        s.waiters.drain(..).partition(|(v, _)| *v == version);
                    s.waiters = keep;
                    for (_, w) in done {
                        let _ = w.send(error.clone());
                    }
                }
            }
            UpMessage::Other(Up::PolicyInForce { policy_version, policy_sha256 }) => {
                // A rule file loaded on the appliance itself: evidence of what it enforced
                // from when, beside the pushes' acknowledgements (written before the status
                // says so).
                if policy_version.is_none() {
                    tracing::warn!(dataplane = %name, sha256 = %policy_sha256, "the data plane loaded a local rule file");
                    let (st, who) = (state.clone(), format!("dataplane:{name}"));
                    let detail = serde_json::json!({ "dataplane": name, "sha256": policy_sha256 });
                    let written = tokio::task::spawn_blocking(move || {
                        lock!(st.rules).audit(&who, "rules.local", &detail.to_string(), None)
                    })
                    .await;
                    if let Ok(Err(e)) = written {
                        tracing::error!(dataplane = %name, "a local rule file not audited: {e}");
                    }
                }
                links.update(name, |s| {
                    s.policy_version = policy_version;
                    s.policy_sha256 = Some(policy_sha256);
                });
            }
            UpMessage::Other(Up::IdentitiesAck { generation, entries }) => {
                links.update(name, |s| s.identities = Some((generation, entries)));
                if let Some(s) = lock!(links.sessions).get_mut(name) {
                    // An acknowledgement covers its generation and every older one.
                    let (done, keep): (Vec<_>, Vec<_>) =
                        s.feed_waiters.drain(..).partition(|(g, _)| *g <= generation);
                    s.feed_waiters = keep;
                    for (_, w) in done {
                        let _ = w.send(entries);
                    }
                }
            }
            UpMessage::Other(Up::Held { ticket }) if !crate::approvals::valid_id(&ticket.id) => {
                // Never stored nor shown: the data plane's wait ends at its timeout (blocked).
                tracing::warn!(dataplane = %name, "a held request with a malformed id: ignored");
            }
            UpMessage::Other(Up::Held { ticket }) => {
                let (st, n) = (state.clone(), name.to_owned());
                let id = ticket.id.clone();
                let fresh = tokio::task::spawn_blocking(move || {
                    let new = lock!(st.approvals).held(&n, &ticket)?;
                    if !new {
                        // Decided while the data plane was away: it gets the decision now.
                        let decided = lock!(st.approvals).get(&ticket.id)?;
                        if let Some(d) = decided.as_ref().and_then(crate::approvals_api::decision_of)
                            && let Some(s) = lock!(st.links.sessions).get(&n)
                        {
                            let _ = s.tx.send(Down::Decision { decision: d });
                        }
                    }
                    if new {
                        st.prompts.keep(&ticket);
                        if let Some(q) = &st.webhook
                            && q.try_send(crate::webhook::notice(&ticket, &n)).is_err()
                        {
                            tracing::warn!(id = %ticket.id, "approval webhook queue full: notice dropped");
                        }
                    }
                    Ok::<_, crate::store::StoreError>(new)
                })
                .await
                .map_err(std::io::Error::other)?;
                match fresh {
                    Ok(true) => {
                        tracing::info!(dataplane = %name, %id, "a request waits for approval")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(dataplane = %name, %id, "storing a held request: {e}")
                    }
                }
            }
            UpMessage::Other(Up::HoldEnded { id, outcome }) => {
                state.prompts.forget(&id);
                let st = state.clone();
                let (i, o) = (id.clone(), outcome.clone());
                let r = tokio::task::spawn_blocking(move || lock!(st.approvals).ended(&i, &o))
                    .await
                    .map_err(std::io::Error::other)?;
                match r {
                    Ok(true) => {
                        tracing::info!(dataplane = %name, %id, %outcome, "a held request stopped waiting")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(dataplane = %name, %id, "ending a held request: {e}"),
                }
            }
            UpMessage::Other(Up::KeysAck { generation, keys, dlp_salt }) => {
                tracing::info!(dataplane = %name, generation, keys, dlp_salt = dlp_salt.as_deref().unwrap_or("-"), "brokered keys in force");
                links.update(name, |s| {
                    s.keys = Some((generation, keys));
                    s.dlp_salt = dlp_salt;
                });
                if let Some(s) = lock!(links.sessions).get_mut(name) {
                    let (done, keep): (Vec<_>, Vec<_>) =
                        s.key_waiters.drain(..).partition(|(g, _)| *g <= generation);
                    s.key_waiters = keep;
                    for (_, w) in done {
                        let _ = w.send(keys);
                    }
                }
            }
            other => tracing::warn!(dataplane = %name, "unexpected message: {other:?}"),
        }
    }
    Ok(())
}

/// What a batch of records left.
struct Stored {
    /// Records read (with a sequence number).
    received: usize,
    /// Highest sequence number among them.
    upto: Option<u64>,
    /// The last statistics record.
    stats: Option<Value>,
}

/// Stores a batch of records from data plane `name` and publishes the new ones (blocking:
/// runs off the link's task).
fn store_batch(
    state: &AppState,
    name: &str,
    records: &sluice_link::Records,
) -> Result<Stored, crate::store::StoreError> {
    let rows: Vec<Row<'_>> = records.iter().filter_map(|r| Row::read(r, name)).collect();
    if rows.len() < records.len() {
        tracing::warn!(
            dataplane = %name,
            skipped = records.len() - rows.len(),
            "records unreadable or without a sequence number skipped"
        );
    }
    let stats = rows
        .iter()
        .rev()
        .find(|r| r.kind == RecordKind::Stats)
        .and_then(|r| serde_json::from_str(&r.json).ok());
    let fresh = {
        let mut store = lock!(state.flows);
        let fresh = store.ingest(name, &rows)?;
        // Written while the store is still locked: verification takes its snapshots of both
        // stores under this lock, so it never sees a gap without the note that explains it.
        // What a batch whose commit was not confirmed left is written after the next one.
        crate::notes::drain(state, &mut **store);
        fresh
    };
    let now = now_s();
    for (r, new) in rows.iter().zip(fresh) {
        if new {
            state.hub.publish(r);
            if let (RecordKind::Request, Some(q)) = (r.kind, &r.quota) {
                state.quotas.add(q, r.ts_ms, r.tokens.input.saturating_add(r.tokens.output), now);
            }
        }
    }
    for r in rows.iter().filter(|r| r.kind == RecordKind::Alarm) {
        // A data plane lost records: security must hear of it, in the audit log too.
        tracing::error!(dataplane = %name, alarm = %r.json, "data plane alarm");
        let what = serde_json::from_str::<Value>(&r.json)
            .ok()
            .and_then(|v| v.get("alarm").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let who = format!("dataplane:{name}");
        if let Err(e) = lock!(state.rules).audit_once(&who, &format!("alarm.{what}"), &r.json) {
            tracing::error!(dataplane = %name, "writing a data plane alarm to the audit log: {e}");
        }
    }
    Ok(Stored { received: rows.len(), upto: rows.iter().map(|r| r.seq).max(), stats })
}
