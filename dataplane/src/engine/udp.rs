//! The UDP side of the engine: QUIC Initials on UDP 443 (read, then decided like a
//! ClientHello) and DNS snooping (answers for inspected names teach the divert which IPs to
//! steer; queries for categorised names are counted per identity; answers for categorised
//! names lose the `ech` parameter of their HTTPS records).

use sluice_rules::{AppSeen, CanaryPolicy, DnsEchPolicy, Query, QuicPolicy, QuicRefusal};

use super::{Action, Engine, MAX_QUIC_HELD, Now, QUIC_PORT, Side, Transmit, count, decide_flow};
use crate::flow::{FlowKey, TcpState, Verdict};
use crate::reassembly::{Added, Reassembly};
use crate::wire::frame::{self, Frame, Proto};
use crate::wire::tls::parse_hello_body;
use crate::wire::{dns, quic, svcb};

impl Engine {
    /// DNS snooping: answers for inspected names teach which IPs to divert; queries for names
    /// in any category are counted per identity. Never changes the verdict of the datagram.
    fn snoop_dns(&mut self, side: Side, f: &Frame<'_>, msg: &dns::Message, now: Now) {
        let policy = self.policy.load_full();
        if side == Side::Outside && f.sport == 53 && msg.response {
            let names = msg
                .question
                .iter()
                .chain(msg.aliases.iter())
                .chain(msg.answers.iter().map(|a| &a.name));
            if let Some(name) = names.into_iter().find(|n| policy.is_inspected_name(n)).cloned() {
                for a in &msg.answers {
                    self.learn(a.addr, &name, a.ttl, now);
                }
            }
        } else if side == Side::Inside && f.dport == 53 && !msg.response {
            let Some(q) = msg.question.as_deref() else { return };
            let Some(cat) = policy.categories_of(q).first() else { return };
            let overlay = self.overlay.load();
            let query = Query {
                src: f.src,
                mac: Some(f.src_mac),
                sni: None,
                port: 53,
                now: now.unix_ms / 1000,
                app: AppSeen::Unseen,
                op: None,
            };
            let who = policy.resolve(&query, &overlay);
            let key = (
                policy.identity_name(who.id).to_string(),
                policy.category_name(cat).map_or_else(String::new, |c| c.to_string()),
            );
            *self.dns_queries.entry(key).or_insert(0) += 1;
        }
    }

    pub(super) fn udp_or_other(
        &mut self,
        side: Side,
        data: &[u8],
        f: &Frame<'_>,
        key: FlowKey,
        now: Now,
    ) -> Action {
        // A DNS answer passed on with its HTTPS records' `ech` parameter hidden, if it has one.
        let mut rewritten = None;
        if f.proto == Proto::Udp && (f.sport == 53 || f.dport == 53) {
            // Read once for the canary, the snooping and the ECH hiding.
            let msg = dns::read(f.payload).ok();
            if side == Side::Inside
                && f.dport == 53
                && let Some(m) = &msg
                && self.answer_canary(side, f, m)
            {
                return Action::Drop;
            }
            if let Some(m) = &msg {
                self.snoop_dns(side, f, m, now);
            }
            if side == Side::Outside && f.sport == 53 {
                rewritten = self.hide_ech(data, f, msg.as_ref());
            }
        }
        let quic = side == Side::Inside && f.proto == Proto::Udp && f.dport == QUIC_PORT;
        if !self.table.contains(&key) {
            let verdict = if quic { Verdict::Pending } else { Verdict::Allow };
            if self.insert(key, side, f, now, TcpState::NotTcp, verdict).is_none() {
                return Action::Forward;
            }
        }
        let Some(flow) = self.table.get_mut(&key) else { return Action::Forward };
        count(flow, f, now);
        let c2s = (f.src, f.sport) == flow.client;
        match flow.verdict {
            Verdict::Allow => {
                let fast = self.settings.fast_path;
                Self::maybe_offload(&mut self.offload_ops, &mut self.counters, fast, flow);
                match rewritten {
                    Some(frame) => {
                        self.counters.ech_hidden += 1;
                        self.transmits.push_back(Transmit { side: Side::Inside, frame });
                        Action::Drop
                    }
                    None => Action::Forward,
                }
            }
            Verdict::Block | Verdict::Divert => {
                if quic && c2s {
                    self.refuse_quic(side, data, f);
                }
                Action::Drop
            }
            Verdict::Pending if !c2s => Action::Forward,
            Verdict::Pending => self.quic_initial(key, side, data, f, now),
        }
    }

    /// Answers Firefox's DoH canary with NXDOMAIN when the rules ask (`doh_canary`): Firefox
    /// then keeps DNS over HTTPS off, and the names it looks up stay readable for the divert.
    fn answer_canary(&mut self, side: Side, f: &Frame<'_>, msg: &dns::Message) -> bool {
        if self.policy.load().defaults.doh_canary != CanaryPolicy::Nxdomain {
            return false;
        }
        if msg.response || msg.question.as_deref() != Some(dns::DOH_CANARY) {
            return false;
        }
        let Some(reply) = dns::nxdomain(f.payload).and_then(|a| frame::build_udp_reply(f, &a))
        else {
            return false;
        };
        self.counters.canary_answers += 1;
        self.transmits.push_back(Transmit { side, frame: reply });
        true
    }

    /// The frame of DNS answer `f` (from the outside) with the `ech` parameter of its HTTPS
    /// and SVCB records for categorised names hidden (`dns_ech = "strip"`,
    /// [`crate::wire::svcb`]): clients then never try ECH for those names. Same length, new
    /// UDP checksum. `None` when there is nothing to hide.
    fn hide_ech(&self, data: &[u8], f: &Frame<'_>, msg: Option<&dns::Message>) -> Option<Vec<u8>> {
        let policy = self.policy.load();
        if policy.defaults.dns_ech != DnsEchPolicy::Strip {
            return None;
        }
        let categorised = |n: &str| !policy.categories_of(n).is_empty();
        // A categorised name behind a CNAME gets its HTTPS record under the target's name:
        // when the question or any name of the chain is categorised, every record is.
        let chain =
            msg.is_some_and(|m| m.question.iter().chain(m.aliases.iter()).any(|n| categorised(n)));
        let payload = svcb::hide_ech(f.payload, |n| chain || categorised(n)).ok()??;
        let at = (f.payload.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        let mut frame = data.to_vec();
        frame.get_mut(at..at + payload.len())?.copy_from_slice(&payload);
        frame::complete_l4_checksum(&mut frame);
        Some(frame)
    }

    /// Tells a QUIC client its flow is refused, as `quic_refusal` says: an ICMP port
    /// unreachable (it falls back to TCP at once), or nothing.
    fn refuse_quic(&mut self, side: Side, data: &[u8], f: &Frame<'_>) {
        if self.policy.load().defaults.quic_refusal != QuicRefusal::Unreachable {
            return;
        }
        if let Some(icmp) = frame::build_port_unreachable(data, f) {
            self.counters.unreachables += 1;
            self.transmits.push_back(Transmit { side, frame: icmp });
        }
    }

    /// Reads a client datagram of a pending QUIC flow; decides once the ClientHello is whole.
    fn quic_initial(
        &mut self,
        key: FlowKey,
        client_side: Side,
        data: &[u8],
        f: &Frame<'_>,
        now: Now,
    ) -> Action {
        let Some(flow) = self.table.get_mut(&key) else { return Action::Forward };
        let pending = &mut *flow.pending;
        super::hello::hold_frames(&mut pending.held, data, std::mem::take(&mut self.frag_hold));
        let outcome = match quic::read_initial(f.payload) {
            Err(e) => Err(e.to_string()),
            Ok(init) => {
                let reasm = pending.reasm.get_or_insert_with(|| Box::new(Reassembly::new(0)));
                let mut conflict = false;
                for c in &init.crypto {
                    let offset = u32::try_from(c.offset).unwrap_or(u32::MAX);
                    match reasm.add(offset, &init.payload[c.start..c.end]) {
                        Added::Ok => {}
                        Added::Conflict => conflict = true,
                        Added::Overflow => conflict = true,
                    }
                }
                if conflict {
                    self.counters.evasions += 1;
                    Err("QUIC CRYPTO frames disagree or exceed 16 KiB".to_owned())
                } else {
                    match quic::hello_body(reasm.contiguous()) {
                        Err(e) => Err(e.to_owned()),
                        Ok(None) if pending.held.len() >= MAX_QUIC_HELD => {
                            Err("no ClientHello in the first QUIC Initials".to_owned())
                        }
                        Ok(None) => return Action::Drop,
                        Ok(Some(body)) => match parse_hello_body(body, true) {
                            None => Err("malformed ClientHello in QUIC".to_owned()),
                            Some(h) => {
                                self.counters.hellos += 1;
                                flow.class.set_hello(&h, &mut self.hello_names);
                                Ok(())
                            }
                        },
                    }
                }
            }
        };
        let policy = self.policy.load();
        let verdict = match outcome {
            Ok(()) => {
                let sni = flow.class.sni.clone();
                let overlay = self.overlay.load();
                let learned = super::learned::name(&self.learned, flow.server.0, now);
                let ask = super::track::Ask {
                    policy: &policy,
                    overlay: &overlay,
                    sni: sni.as_deref(),
                    reason: None,
                    divert: false,
                    now,
                };
                let v = decide_flow(flow, &ask);
                super::ech::decide(&policy, &overlay, flow, learned, v, now)
            }
            Err(_) => {
                flow.class.reason = Some("QUIC Initial unreadable");
                let refuse = match policy.defaults.quic_unreadable {
                    QuicPolicy::Allow => false,
                    QuicPolicy::Drop => true,
                    QuicPolicy::Restricted => policy.may_restrict(
                        f.src,
                        Some(f.src_mac),
                        f.dport,
                        now.unix_ms / 1000,
                        &self.overlay.load(),
                    ),
                };
                if refuse { Verdict::Block } else { Verdict::Allow }
            }
        };
        drop(policy);
        flow.verdict = verdict;
        flow.class.share(&mut self.classes);
        let held = flow.pending.take().map(|p| p.held).unwrap_or_default();
        if verdict == Verdict::Allow {
            self.transmits
                .extend(held.into_iter().map(|h| Transmit { side: client_side.other(), frame: h }));
        } else {
            self.counters.blocked += 1;
            self.refuse_quic(client_side, data, f);
        }
        Action::Drop
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use arc_swap::ArcSwap;

    use super::*;
    use crate::engine::Settings;
    use crate::record::DnsQueryCount;
    use crate::wire::dns::tests::response;
    use etherparse::PacketBuilder;
    use sluice_rules::IdentityOverlay;
    use sluice_rules::catalog::ShippedOnly;

    fn engine() -> Engine {
        let text = include_str!("../../../rules/default.toml");
        let policy = sluice_rules::compile("default.toml", text, &ShippedOnly).unwrap().policy;
        Engine::new(
            Arc::new(ArcSwap::from_pointee(policy)),
            Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
            Settings::default(),
        )
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    #[test]
    fn dns_answers_for_inspected_names_are_learned() {
        let mut e = engine();
        let now = Now { mono_ms: 1_000, unix_ms: 1_700_000_000_000 };
        let api: IpAddr = "198.51.100.10".parse().unwrap();
        let plain: IpAddr = "198.51.100.80".parse().unwrap();
        let query = {
            let mut q = response("api.openai.com", &[], 0);
            q[2] = 0x01; // a query, not a response
            q
        };
        let f = udp([10, 20, 1, 10], [10, 20, 0, 1], 5353, 53, &query);
        assert_eq!(e.handle(Side::Inside, &f, now), Action::Forward);
        let f =
            udp([10, 20, 0, 1], [10, 20, 1, 10], 53, 5353, &response("api.openai.com", &[api], 60));
        assert_eq!(e.handle(Side::Outside, &f, now), Action::Forward);
        let f =
            udp([10, 20, 0, 1], [10, 20, 1, 10], 53, 5353, &response("example.org", &[plain], 60));
        assert_eq!(e.handle(Side::Outside, &f, now), Action::Forward);
        assert!(e.poll_transmit().is_none());
        assert_eq!(e.learned(api, now), Some("api.openai.com"));
        assert_eq!(e.learned(plain, now), None);
        // Expires with the record's TTL.
        assert_eq!(e.learned(api, Now { mono_ms: 61_001, ..now }), None);
        let stats = e.stats(now);
        assert_eq!(stats.learned_destinations, 1);
        assert_eq!(
            stats.dns_queries,
            vec![DnsQueryCount {
                identity: "finance".into(),
                category: "openai-api".into(),
                count: 1
            }]
        );
    }
}
