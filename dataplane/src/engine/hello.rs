//! The ClientHello on the packet path (ARCHITECTURE.md, "The packet path"): a pending TLS
//! flow's client segments held (checksums verified) and reassembled until the hello is whole,
//! the decision (rules, ECH), the guard over a decided hello, and the resets of a refused or
//! evasive flow. A hello riding in a SYN (TCP Fast Open) is decided there.

use super::learned::{self, HELLO_LEARN_TTL};
use super::track::Ask;
use super::{Action, Counters, Engine, Seg, Side, Transmit, decide_flow, ech};
use crate::flow::{Class, Flow, FlowKey, HelloNames, Pending, Shared, TcpState, Verdict};
use crate::guard::{Guard, Step, hello_span};
use crate::reassembly::{Added, Reassembly};
use crate::wire::frame;
use crate::wire::tls::{HelloParse, parse_client_hello};

impl Engine {
    /// A SYN carrying data (TCP Fast Open) to a TLS port: the ClientHello rides in the SYN and
    /// is decided there. Anything short of a whole hello drops the SYN; the client retries
    /// without data and the hello is read as usual.
    pub(super) fn syn_data(&mut self, s: Seg<'_, '_>) -> Action {
        let Seg { side: client_side, data, f, t, key, now } = s;
        if !frame::tcp_checksum_ok(data, f) {
            self.counters.bad_checksums += 1;
            return Action::Drop;
        }
        let Some(flow) = self.table.get_mut(&key) else { return Action::Drop };
        let HelloParse::Hello(h) = parse_client_hello(f.payload, &mut self.scratch) else {
            flow.class.reason = Some("TCP Fast Open data without a whole ClientHello: SYN dropped");
            return Action::Drop;
        };
        self.counters.hellos += 1;
        flow.class.set_hello(&h, &mut self.hello_names);
        let sni = flow.class.sni.clone();
        let divert = self.divert.is_some();
        let policy = self.policy.load();
        let overlay = self.overlay.load();
        let learned = learned::name(&self.learned, flow.server.0, now);
        let ask = Ask {
            policy: &policy,
            overlay: &overlay,
            sni: sni.as_deref(),
            reason: None,
            divert,
            now,
        };
        let verdict = decide_flow(flow, &ask);
        let mut verdict = ech::decide(&policy, &overlay, flow, learned, verdict, now);
        if verdict == Verdict::Allow {
            verdict = guard_hello(flow, &mut self.counters, t.seq.wrapping_add(1), f.payload);
        }
        flow.verdict = verdict;
        flow.class.share(&mut self.classes);
        if verdict == Verdict::Allow {
            return Action::Forward;
        }
        // To inspect but not diverted: refused like a block, and its retry is diverted.
        let missed = match (divert, sni, flow.class.action) {
            (true, Some(name), Some("inspect")) => Some((flow.server.0, name)),
            _ => None,
        };
        self.counters.blocked += 1;
        flow.state = TcpState::Closing;
        // The client is in SYN-SENT: a reset is accepted when it acknowledges the SYN.
        let (client, server) = flow.endpoints();
        if let Some(rst) = frame::build_rst(server, client, flow.vlan, 0, t.seq.wrapping_add(1)) {
            self.transmits.push_back(Transmit { side: client_side, frame: rst });
            self.counters.resets += 1;
        }
        if let Some((ip, name)) = missed {
            self.divert_counters.missed += 1;
            self.learn(ip, &name, HELLO_LEARN_TTL, now);
        }
        Action::Drop
    }

    /// Holds a client data segment of a pending TLS flow and decides once the hello is read.
    pub(super) fn hold(&mut self, s: Seg<'_, '_>) -> Action {
        let Seg { side: client_side, data, f, t, key, now } = s;
        if !frame::tcp_checksum_ok(data, f) {
            // A segment the server drops must not decide (a decoy hello with a bad checksum).
            self.counters.bad_checksums += 1;
            return Action::Drop;
        }
        let Some(flow) = self.table.get_mut(&key) else { return Action::Forward };
        let isn = flow.client_isn;
        let fragments = std::mem::take(&mut self.frag_hold);
        // Fast path: the whole hello in the first segment, in order (what clients send): no
        // reassembly buffer, no copy of the frame.
        let mut fast = None;
        if flow.pending.reasm.is_none() && t.seq == isn.wrapping_add(1) && fragments.is_empty() {
            let parse = parse_client_hello(f.payload, &mut self.scratch);
            fast = outcome(parse, &mut flow.class, &mut self.counters, &mut self.hello_names);
        }
        let held_current = fast.is_none();
        let outcome = match fast {
            Some(o) => o,
            None => {
                let pending = &mut *flow.pending;
                let reasm = pending
                    .reasm
                    .get_or_insert_with(|| Box::new(Reassembly::new(isn.wrapping_add(1))));
                let added = reasm.add(t.seq, f.payload);
                hold_frames(&mut pending.held, data, fragments);
                match added {
                    Added::Conflict => {
                        self.counters.evasions += 1;
                        Outcome::Block("overlapping TCP segments disagree (evasion attempt)")
                    }
                    Added::Overflow => Outcome::Block("no ClientHello within the first 16 KiB"),
                    Added::Ok if pending.held.len() > self.settings.max_held_frames => {
                        Outcome::Block("too many segments before the ClientHello")
                    }
                    Added::Ok => {
                        let parse = parse_client_hello(reasm.contiguous(), &mut self.scratch);
                        match outcome(
                            parse,
                            &mut flow.class,
                            &mut self.counters,
                            &mut self.hello_names,
                        ) {
                            Some(o) => o,
                            None => return Action::Drop,
                        }
                    }
                }
            }
        };
        let mut verdict = match outcome {
            Outcome::Block(why) => {
                flow.class.reason = Some(why);
                flow.class.action = Some("block");
                Verdict::Block
            }
            Outcome::Decide(sni, reason) => {
                let policy = self.policy.load();
                let overlay = self.overlay.load();
                let learned = learned::name(&self.learned, flow.server.0, now);
                let ask = Ask {
                    policy: &policy,
                    overlay: &overlay,
                    sni: sni.as_deref(),
                    reason,
                    divert: self.divert.is_some(),
                    now,
                };
                let v = decide_flow(flow, &ask);
                ech::decide(&policy, &overlay, flow, learned, v, now)
            }
        };
        let learn = match (&flow.class.sni, flow.class.action) {
            (Some(sni), Some("inspect")) => Some((flow.server.0, sni.clone())),
            _ => None,
        };
        let Pending { held, reasm, .. } = flow.pending.take().map(|p| *p).unwrap_or_default();
        let (base, decided, client_next) = match &reasm {
            Some(r) => (isn.wrapping_add(1), r.contiguous(), r.next_seq()),
            None => (t.seq, f.payload, t.seq.wrapping_add(f.payload.len() as u32)),
        };
        if verdict == Verdict::Allow {
            verdict = guard_hello(flow, &mut self.counters, base, decided);
        }
        flow.verdict = verdict;
        flow.class.share(&mut self.classes);
        if verdict == Verdict::Allow {
            self.transmits
                .extend(held.into_iter().map(|h| Transmit { side: client_side.other(), frame: h }));
            if let Some((ip, name)) = learn {
                // The next flow to this inspected server is diverted at its SYN.
                self.learn(ip, &name, HELLO_LEARN_TTL, now);
            }
            // A hello read in place is forwarded as it stands; held frames were sent above.
            return if held_current { Action::Drop } else { Action::Forward };
        }
        self.counters.blocked += 1;
        flow.state = TcpState::Closing;
        let (client, server) = flow.endpoints();
        let server_seq = flow.server_next.unwrap_or(0);
        if let Some(rst) = frame::build_rst(server, client, flow.vlan, server_seq, client_next) {
            self.transmits.push_back(Transmit { side: client_side, frame: rst });
            self.counters.resets += 1;
        }
        if let Some(rst) =
            frame::build_rst(client, server, flow.vlan, isn.wrapping_add(1), server_seq)
        {
            self.transmits.push_back(Transmit { side: client_side.other(), frame: rst });
            self.counters.resets += 1;
        }
        if let Some((ip, name)) = learn {
            // Inspected but not diverted: the client's retry is.
            self.divert_counters.missed += 1;
            self.learn(ip, &name, HELLO_LEARN_TTL, now);
        }
        Action::Drop
    }

    /// Blocks a decided flow caught stepping around its decision: a reset each way.
    pub(super) fn evasion(
        &mut self,
        key: FlowKey,
        client_side: Side,
        why: &'static str,
        client_next: u32,
    ) -> Action {
        let Some(flow) = self.table.get_mut(&key) else { return Action::Drop };
        flow.verdict = Verdict::Block;
        flow.class.action = Some("block");
        flow.class.reason = Some(why);
        flow.pending.clear();
        flow.class.share(&mut self.classes);
        flow.state = TcpState::Closing;
        self.counters.evasions += 1;
        self.counters.blocked += 1;
        let (client, server) = flow.endpoints();
        let server_seq = flow.server_next.unwrap_or(0);
        let resets = [
            (client_side, frame::build_rst(server, client, flow.vlan, server_seq, client_next)),
            (
                client_side.other(),
                frame::build_rst(client, server, flow.vlan, client_next, server_seq),
            ),
        ];
        for (side, rst) in resets {
            if let Some(rst) = rst {
                self.transmits.push_back(Transmit { side, frame: rst });
                self.counters.resets += 1;
            }
        }
        Action::Drop
    }
}

/// Puts a guard over the hello `flow` was just allowed on (`decided`: the client's bytes
/// from `base`), unless they are not a hello (a stream allowed as not TLS). What came with the
/// hello is read as the guard reads what follows one: a second hello or a hidden record
/// refuses the flow. Returns the verdict.
fn guard_hello(flow: &mut Flow, counters: &mut Counters, base: u32, decided: &[u8]) -> Verdict {
    let Some(span) = hello_span(decided) else { return Verdict::Allow };
    let mut g = Guard::new(base, &decided[..span], flow.server_next);
    match g.client(base, decided) {
        Step::Pass => {
            flow.pending.guard = Some(Box::new(g));
            Verdict::Allow
        }
        Step::Evasion(why) => refuse_evasion(flow, counters, why),
        Step::SecondHello(_) => {
            refuse_evasion(flow, counters, "two ClientHellos in one flight (evasion attempt)")
        }
    }
}

/// Marks `flow`, about to be allowed, as caught stepping around its decision: refused.
pub(super) fn refuse_evasion(
    flow: &mut Flow,
    counters: &mut Counters,
    why: &'static str,
) -> Verdict {
    counters.evasions += 1;
    flow.class.action = Some("block");
    flow.class.reason = Some(why);
    Verdict::Block
}

/// Keeps a frame of a held flow: the frame itself, or the fragments it was reassembled from.
pub(super) fn hold_frames(held: &mut Vec<Vec<u8>>, data: &[u8], fragments: Vec<Vec<u8>>) {
    if fragments.is_empty() {
        held.push(data.to_vec());
    } else {
        held.extend(fragments);
    }
}

enum Outcome {
    Block(&'static str),
    Decide(Option<String>, Option<&'static str>),
}

/// What a parse of the client's first bytes means for the decision (`None`: the hello is not
/// whole yet); a whole hello is noted in the flow's classification and counted.
fn outcome(
    parse: HelloParse<'_>,
    class: &mut Shared<Class>,
    counters: &mut Counters,
    names: &mut HelloNames,
) -> Option<Outcome> {
    match parse {
        HelloParse::Incomplete => None,
        HelloParse::NotTls => Some(Outcome::Decide(None, Some("not TLS on a TLS port"))),
        HelloParse::Malformed(why) => Some(Outcome::Block(why)),
        HelloParse::Hello(h) => {
            counters.hellos += 1;
            class.set_hello(&h, names);
            Some(Outcome::Decide(class.sni.clone(), None))
        }
    }
}
