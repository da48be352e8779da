//! Per-flow bookkeeping shared by the engine's steps: the policy's answer written into a flow,
//! and a TCP segment's counts and state (handshake, server sequence, FINs, resets).

use sluice_rules::{Action as RuleAction, AppSeen, IdentityOverlay, Policy, Query};

use super::Now;
use crate::flow::{Flow, TcpState, Verdict};
use crate::wire::frame::{Frame, Proto, Tcp};

/// What a flow's decision is asked with.
pub(super) struct Ask<'a> {
    pub policy: &'a Policy,
    pub overlay: &'a IdentityOverlay,
    /// The server name, if known.
    pub sni: Option<&'a str>,
    /// Why, when not simply the rule (e.g. not TLS on a TLS port).
    pub reason: Option<&'static str>,
    /// The data plane diverts (interception is available).
    pub divert: bool,
    pub now: Now,
}

/// Asks the policy about a flow whose server name is now known, and records the answer.
///
/// With `divert` available, an `inspect` decision for a TCP flow that was not diverted at its
/// SYN blocks it (the caller resets it and learns the destination: the retry is diverted).
pub(super) fn decide_flow(flow: &mut Flow, a: &Ask<'_>) -> Verdict {
    let Ask { policy, overlay, sni, reason, divert, now } = *a;
    // The app its hello shows (a flow without one, not TLS, is an unknown client).
    let seen = flow.class.ja4.as_deref().map(|j| policy.apps.by_hello(j, sni)).unwrap_or_default();
    flow.class.app = flow.class.ja4.is_some().then(|| policy.apps.shared_name_or_unknown(seen.app));
    flow.class.app_evidence = seen.app.map(|_| seen.evidence.as_str());
    let q = Query {
        src: flow.client.0,
        mac: Some(flow.client_mac),
        sni,
        port: flow.server.1,
        now: now.unix_ms / 1000,
        app: AppSeen::Hello(seen.app),
        op: None,
    };
    let d = policy.decide(&q, overlay);
    flow.identity = Some(d.identity.clone());
    flow.user = d.user.cloned();
    flow.class.category = d.category.cloned();
    flow.class.rule = Some(d.shared_rule_name());
    flow.class.action = Some(d.action.as_str());
    flow.class.reason = reason.or(match d.action {
        RuleAction::Inspect if flow.proto == Proto::Udp => {
            Some("inspected category over QUIC: refused so the client falls back to TCP")
        }
        RuleAction::Inspect if divert => {
            Some("to inspect but not diverted at its SYN: reset, destination learned for the retry")
        }
        RuleAction::Inspect => Some("inspection not available on this data plane: passed"),
        _ => None,
    });
    match (d.action, flow.proto) {
        (RuleAction::Block, _) | (RuleAction::Inspect, Proto::Udp) => Verdict::Block,
        (RuleAction::Inspect, _) if divert => Verdict::Block,
        (RuleAction::Allow | RuleAction::Inspect, _) => Verdict::Allow,
    }
}

/// Counts a TCP segment of `flow` and follows its state (handshake, server sequence, FINs,
/// RST). Returns true for client → server. Shared by the ports and the TUN (whose replies
/// arrive with the original server's address restored).
pub(super) fn track(flow: &mut Flow, f: &Frame<'_>, t: Tcp, now: Now) -> bool {
    let c2s = (f.src, f.sport) == flow.client;
    count(flow, f, now);
    if c2s {
        // The handshake completes with the client's acknowledgment of the SYN-ACK, which
        // acknowledges the server's sequence number: a spoofed SYN the server answered, or a
        // blind ACK after it, stays an attempt (evictable, summarised).
        if t.has_ack
            && !t.rst
            && flow.state == TcpState::Embryonic
            && flow.server_next == Some(t.ack)
        {
            flow.state = TcpState::Established;
            flow.handshake_done = true;
        }
    } else {
        if t.syn && t.has_ack {
            flow.server_next = Some(t.seq.wrapping_add(1));
        } else if let Some(n) = flow.server_next {
            let end = t.seq.wrapping_add(f.payload.len() as u32).wrapping_add(u32::from(t.fin));
            if (end.wrapping_sub(n) as i32) > 0 {
                flow.server_next = Some(end);
            }
        }
    }
    close(flow, c2s, t.fin, t.rst);
    c2s
}

/// Follows a FIN or RST of `flow` in one direction: a RST, or a FIN each way, closes it.
pub(super) fn close(flow: &mut Flow, c2s: bool, fin: bool, rst: bool) {
    if rst {
        flow.state = TcpState::Closing;
    } else if fin {
        if c2s {
            flow.fins.0 = true
        } else {
            flow.fins.1 = true
        }
        if flow.fins.0 && flow.fins.1 {
            flow.state = TcpState::Closing;
        }
    }
}

pub(super) fn count(flow: &mut Flow, f: &Frame<'_>, now: Now) {
    let c2s = (f.src, f.sport) == flow.client;
    let bytes = f.payload.len() as u64;
    let ctr = if c2s { &mut flow.c2s } else { &mut flow.s2c };
    ctr.0 += 1;
    ctr.1 += bytes;
    flow.last_mono = now.mono_ms;
}
