//! The packet threads: one per port reads frames a batch at a time, gives them to the engine
//! (locked once per batch) and sends what it forwards or emits; one reads the TUN. Both port
//! kinds (the receive ring and the plain socket) read through [`Receive`], so one loop serves
//! them (ARCHITECTURE.md, "Processes and crates").

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_dataplane::engine::{Action, Clock, Engine, Now, OffloadOp, Side, Transmit};
use sluice_dataplane::fastpath::FastPath;
use sluice_dataplane::port::Port;
use sluice_dataplane::ring::{self, RxRing, TxPort};
use sluice_dataplane::tun::Tun;
use tracing::{error, warn};

use crate::output::Wake;
use crate::watchdog;

/// How long a receive waits before the loop looks at the stop flag again.
pub const WAIT: Duration = Duration::from_millis(200);

/// Frames received together.
pub trait Frames {
    /// Number of frames.
    fn len(&self) -> usize;
    /// Frame `i`; `None` for one that must not be forwarded (truncated by the ring).
    fn frame(&self, i: usize) -> Option<&[u8]>;
}

/// The receive side of a port.
pub trait Receive: Send {
    /// A batch, borrowed from the port until dropped.
    type Batch<'a>: Frames
    where
        Self: 'a;
    /// Up to `max` frames, waiting up to [`WAIT`] for the first.
    fn batch(&mut self, max: usize) -> io::Result<Self::Batch<'_>>;
    /// Reports what the port dropped on its own since the last call (after each batch).
    fn after_batch(&mut self) {}
}

impl Frames for ring::Batch<'_> {
    fn len(&self) -> usize {
        ring::Batch::len(self)
    }
    fn frame(&self, i: usize) -> Option<&[u8]> {
        ring::Batch::frame(self, i)
    }
}

/// A receive ring, with the count of truncated frames it last reported.
pub struct RingRx {
    ring: RxRing,
    truncated_seen: u64,
}

impl RingRx {
    pub fn new(ring: RxRing) -> Self {
        RingRx { ring, truncated_seen: 0 }
    }
}

impl Receive for RingRx {
    type Batch<'a> = ring::Batch<'a>;
    fn batch(&mut self, max: usize) -> io::Result<ring::Batch<'_>> {
        self.ring.batch(max, WAIT)
    }
    fn after_batch(&mut self) {
        if self.ring.truncated != self.truncated_seen {
            self.truncated_seen = self.ring.truncated;
            warn!(
                port = self.ring.name(),
                total = self.truncated_seen,
                "frames larger than a ring slot dropped"
            );
        }
    }
}

/// A plain packet socket: one frame per batch, copied into the reader's buffer.
pub struct SocketRx {
    port: Arc<Port>,
    buf: Vec<u8>,
}

impl SocketRx {
    pub fn new(port: Arc<Port>) -> Self {
        SocketRx { port, buf: vec![0; 65_536] }
    }
}

/// What a socket read: nothing (timeout) or one frame.
pub struct OneFrame<'a>(Option<&'a [u8]>);

impl Frames for OneFrame<'_> {
    fn len(&self) -> usize {
        usize::from(self.0.is_some())
    }
    fn frame(&self, i: usize) -> Option<&[u8]> {
        self.0.filter(|_| i == 0)
    }
}

impl Receive for SocketRx {
    type Batch<'a> = OneFrame<'a>;
    fn batch(&mut self, _max: usize) -> io::Result<OneFrame<'_>> {
        // The socket was opened with a receive timeout of WAIT.
        Ok(OneFrame(self.port.recv(&mut self.buf)?.map(|r| &self.buf[r])))
    }
}

/// The ports as the packet threads send through them.
#[derive(Clone)]
pub enum Ports {
    Ring(Arc<TxPort>, Arc<TxPort>),
    Socket(Arc<Port>, Arc<Port>),
}

impl Ports {
    fn send_batch(&self, side: Side, frames: &[&[u8]]) {
        let r = match (self, side) {
            (Ports::Ring(i, _), Side::Inside) => i.send_batch(frames).map(|_| ()),
            (Ports::Ring(_, o), Side::Outside) => o.send_batch(frames).map(|_| ()),
            (Ports::Socket(i, _), Side::Inside) => frames.iter().try_for_each(|f| i.send(f)),
            (Ports::Socket(_, o), Side::Outside) => frames.iter().try_for_each(|f| o.send(f)),
            (_, Side::Tun) => Ok(()),
        };
        if let Err(e) = r {
            warn!(port = side_name(side), frames = frames.len(), "send failed: {e}");
        }
    }
}

/// What every packet thread shares.
#[derive(Clone)]
pub struct Shared {
    pub ports: Ports,
    pub engine: Arc<Mutex<Engine>>,
    pub clock: Clock,
    pub tun: Option<Arc<Tun>>,
    pub fast: Option<Arc<FastPath>>,
    pub stop: Arc<AtomicBool>,
    /// Told when the engine holds records, so they reach the spool within milliseconds.
    pub wake: Arc<Wake>,
}

impl Shared {
    /// Runs `f` on the engine (locked), then applies the fast-path operations it produced and
    /// wakes the record writer if records wait.
    fn with_engine<T>(&self, ops: &mut Vec<OffloadOp>, f: impl FnOnce(&mut Engine, Now) -> T) -> T {
        let (t, records) = {
            let mut eng = self.engine.lock().unwrap_or_else(PoisonError::into_inner);
            let now = self.clock.now();
            let t = f(&mut eng, now);
            offload(&mut eng, self.fast.as_deref(), ops, now);
            (t, eng.has_records())
        };
        if records {
            self.wake.notify();
        }
        t
    }

    fn send_tun(&self, pkt: &[u8]) {
        if let Some(t) = &self.tun
            && let Err(e) = t.send(pkt)
        {
            warn!(tun = t.name(), "write failed: {e}");
        }
    }

    /// Sends frames the engine emitted, in order per port (a batch per port).
    pub fn send(&self, out: &[Transmit]) {
        for side in [Side::Inside, Side::Outside] {
            let frames: Vec<&[u8]> =
                out.iter().filter(|t| t.side == side).map(|t| t.frame.as_slice()).collect();
            if !frames.is_empty() {
                self.ports.send_batch(side, &frames);
            }
        }
        for t in out.iter().filter(|t| t.side == Side::Tun) {
            self.send_tun(&t.frame);
        }
    }
}

/// Applies the fast-path operations the engine produced (with the engine locked, so the map
/// follows its order) and gives the engine back what the map said.
pub fn offload(eng: &mut Engine, fast: Option<&FastPath>, ops: &mut Vec<OffloadOp>, now: Now) {
    if let Some(fp) = fast {
        fp.sync(eng, ops, now);
    }
}

/// One item to send after a batch: a frame of the batch, or one the engine emitted.
enum Out {
    Received(usize),
    Emitted(usize),
}

/// Reads `rx` (the port on `side`) until stopped: up to 128 frames per lock of the engine and
/// per send system call, in wire order.
pub fn run_port<R: Receive>(mut rx: R, side: Side, io: Shared) {
    let mut ops = Vec::new();
    let mut out: Vec<Transmit> = Vec::new();
    let mut plan: Vec<(Side, Out)> = Vec::new();
    while !io.stop.load(Ordering::Relaxed) {
        watchdog::beat();
        let batch = match rx.batch(128) {
            Ok(b) => b,
            Err(e) => {
                error!(port = side_name(side), "receive failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if batch.len() == 0 {
            continue;
        }
        io.with_engine(&mut ops, |eng, now| {
            for i in 0..batch.len() {
                let Some(frame) = batch.frame(i) else { continue };
                let action = eng.handle(side, frame, now);
                // Keep the wire order: what the engine released goes before this frame.
                while let Some(t) = eng.poll_transmit() {
                    plan.push((t.side, Out::Emitted(out.len())));
                    out.push(t);
                }
                if action == Action::Forward {
                    plan.push((side.other(), Out::Received(i)));
                }
            }
        });
        for dest in [Side::Inside, Side::Outside] {
            let frames: Vec<&[u8]> = plan
                .iter()
                .filter(|(d, _)| *d == dest)
                .filter_map(|(_, s)| match s {
                    Out::Received(i) => batch.frame(*i),
                    Out::Emitted(k) => Some(&out[*k].frame[..]),
                })
                .collect();
            if !frames.is_empty() {
                io.ports.send_batch(dest, &frames);
            }
        }
        for t in out.iter().filter(|t| t.side == Side::Tun) {
            io.send_tun(&t.frame);
        }
        plan.clear();
        out.clear();
        drop(batch);
        rx.after_batch();
    }
}

/// Reads the TUN: replies of the interception engine to diverted clients and its upstream
/// packets, NAT-ed by the engine and sent out of a port.
pub fn run_tun(tun: Arc<Tun>, io: Shared) {
    let mut ops = Vec::new();
    // Up to BATCH packets per lock of the engine and per send system call.
    const BATCH: usize = 64;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 65_536]).collect();
    let mut lens = [0usize; BATCH];
    let mut out = Vec::new();
    while !io.stop.load(Ordering::Relaxed) {
        watchdog::beat();
        let mut n = 0;
        while n < BATCH {
            let wait = if n == 0 { WAIT } else { Duration::ZERO };
            match tun.recv(&mut bufs[n], wait) {
                Ok(Some(len)) => {
                    lens[n] = len;
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    error!(tun = tun.name(), "read failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        io.with_engine(&mut ops, |eng, now| {
            for i in 0..n {
                eng.handle_tun(&bufs[i][..lens[i]], now);
                out.extend(std::iter::from_fn(|| eng.poll_transmit()));
            }
        });
        io.send(&out);
        out.clear();
    }
}

pub fn side_name(s: Side) -> &'static str {
    match s {
        Side::Inside => "inside",
        Side::Outside => "outside",
        Side::Tun => "tun",
    }
}
