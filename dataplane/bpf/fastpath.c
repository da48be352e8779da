// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Sluice's kernel fast path: frames of flows the packet engine has already decided `allow`
// are sent straight from one port to the other by the kernel, without crossing user space;
// and the divert NAT of flows the engine steers to the interception engine (DESIGN.md,
// "Divert") is done here for every segment after the SYN, between the ports and the TUN.
//
// Two programs share one map of offloaded flows (`flows`, keyed by the directional 5-tuple,
// VLAN and ingress port; filled and emptied only by the packet engine):
//
// - `fastpath_sock` is the socket filter of the AF_PACKET receive sockets, which see every
//   frame first (packet taps run before tc ingress). A frame of an offloaded flow is counted
//   in its map entry and refused (the engine never sees it); any other is accepted. The
//   decision is left in the frame's control block for the classifier.
// - `fastpath_tc` runs at tc ingress on both ports and carries out that decision: a refused
//   frame is redirected to the other port (`bpf_redirect`), an accepted one goes on
//   (`TC_ACT_UNSPEC`: the failure program next, then the host stack, which drops it since
//   the ports have no addresses). So each frame takes exactly one path, even when the engine
//   changes the map between the two programs.
//
// - `fastpath_tun` runs at tc egress of the TUN: the interception engine's packets (replies
//   to diverted clients, its upstream connections) are rewritten, given an Ethernet header
//   and sent out of a port; the rest reaches the TUN's reader, the packet engine.
//
// An entry either forwards unchanged (ACT_FORWARD), or rewrites the destination and delivers
// into the TUN (ACT_TO_TUN: client -> listener, server -> upstream socket), or rewrites the
// source and sends out of a port with the MACs the engine learned (ACT_TO_PORT: listener ->
// client, upstream socket -> server). Checksums are updated incrementally.
//
// TCP segments carrying SYN, FIN or RST of allowed flows are not offloaded: the engine sees
// their handshakes and closes and keeps their state itself. Divert NAT entries, set up by the
// engine before the segments they carry, take SYNs (FLAG_SYN) and FINs and RSTs (FLAG_CLOSE)
// too: a close is noted in the entry and in the `closes` ring buffer, which the data plane
// reads four times a second, and the engine follows it from there. Only the
// simple shapes are matched (one or no 802.1Q tag, IPv4 without fragmentation, IPv6 whose next
// header is TCP or UDP); everything else takes the engine's path, which handles all of them.
//
// Built by dataplane/build.rs with `clang -O2 -target bpf`.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// The key of one direction of an offloaded flow. Mirrored by `fastpath::Key` (44 bytes, no
// padding): keep both in step.
struct flow_key {
	__u8 src[16];     // IPv4 addresses in the first four bytes, the rest zero
	__u8 dst[16];
	__u32 ifindex;    // port the frame arrives on
	__u16 sport;      // network byte order
	__u16 dport;      // network byte order
	__u16 vlan;       // 802.1Q VLAN id, 0 untagged
	__u8 proto;       // IPPROTO_TCP or IPPROTO_UDP
	__u8 family;      // 4 or 6
};

// FLAG_SYN: SYN segments too (divert NAT entries, set up before the SYNs they carry: the
// engine has nothing to learn from them).
#define FLAG_SYN 0x01
// FLAG_CLOSE: FIN and RST segments too (divert NAT entries), each noted (`fin`, `rst`, and
// the first one of each kind in `closes`).
#define FLAG_CLOSE 0x02

enum {
	ACT_FORWARD = 0,  // out of the other port, unchanged
	ACT_TO_TUN = 1,   // destination := addr/port, into the TUN's receive path
	ACT_TO_PORT = 2,  // source := addr/port, Ethernet (and VLAN) header added, out of a port
};

// Mirrored by `fastpath::Value` (56 bytes, no padding).
struct flow_value {
	__u32 out_ifindex;  // where it goes
	__u8 action;        // ACT_*
	__u8 flags;         // FLAG_*
	__u16 vlan;         // ACT_TO_PORT: VLAN id to tag with (0: untagged)
	__u8 addr[16];      // the new address (IPv4 in the first four bytes)
	__u16 port;         // the new port, network byte order
	__u8 eth_dst[6];    // ACT_TO_PORT: the Ethernet header
	__u8 eth_src[6];
	__u8 fin;           // FLAG_CLOSE: a FIN was carried (set here, read by the data plane)
	__u8 rst;           // FLAG_CLOSE: a RST was carried
	__u64 packets;      // frames carried (this direction)
	__u64 bytes;        // their transport payload bytes, as the engine counts them
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);  // set by the loader from --max-flows
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

// A close carried by a FLAG_CLOSE entry, for the data plane. Mirrored by
// `fastpath::CloseEvent` (48 bytes).
struct close_event {
	struct flow_key key;
	__u8 fin;
	__u8 rst;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);  // about 18,000 events between two reads
} closes SEC(".maps");

#define TCP_FLAGS_FIN 0x01
#define TCP_FLAGS_SYN 0x02
#define TCP_FLAGS_RST 0x04

// Where the headers of a classified frame are.
struct where {
	__u32 l3;    // offset of the IP header
	__u32 l4;    // offset of the TCP/UDP header
	int payload; // transport payload bytes
	__u8 tcp;    // TCP flags (0 for UDP)
};

// Notes a FIN or RST that entry `v` (key `k`) carries: in the entry, and the first of each
// kind in `closes` (without waking anyone: the data plane reads it on its own clock). When the
// ring is full the event is lost, and the data plane finds the close in the entry at its next
// count of the map.
static __always_inline void note_close(struct flow_value *v, const struct flow_key *k,
				       const struct where *w)
{
	struct close_event e;
	__u8 fin = (w->tcp & TCP_FLAGS_FIN) != 0;
	__u8 rst = (w->tcp & TCP_FLAGS_RST) != 0;

	if ((!fin || v->fin) && (!rst || v->rst))
		return;  // a retransmission: already noted
	if (fin)
		v->fin = 1;
	if (rst)
		v->rst = 1;
	__builtin_memset(&e, 0, sizeof(e));
	e.key = *k;
	e.fin = fin;
	e.rst = rst;
	bpf_ringbuf_output(&closes, &e, sizeof(e), BPF_RB_NO_WAKEUP);
}

// True when entry `v` carries a frame with these TCP flags: SYN only where the entry says so
// (FLAG_SYN), FIN and RST likewise (FLAG_CLOSE, noted); an allowed flow's closes always go
// to the engine.
static __always_inline int carries(struct flow_value *v, const struct flow_key *k,
				   const struct where *w)
{
	if ((w->tcp & TCP_FLAGS_SYN) && !(v->action != ACT_FORWARD && (v->flags & FLAG_SYN)))
		return 0;
	if (w->tcp & (TCP_FLAGS_FIN | TCP_FLAGS_RST)) {
		if (v->action == ACT_FORWARD || !(v->flags & FLAG_CLOSE))
			return 0;
		note_close(v, k, w);
	}
	return 1;
}

// Reads an IP packet at `off` (ethertype `type`) into a key; 0, or -1 for a packet the fast
// path does not take.
static __always_inline int classify_l3(struct __sk_buff *skb, struct flow_key *k, __u32 off,
				       __be16 type, struct where *w)
{
	__u8 l4;
	__u32 l4off, iplen;

	if (type == bpf_htons(ETH_P_IP)) {
		__u8 ip[20];
		if (bpf_skb_load_bytes(skb, off, ip, 20) < 0)
			return -1;
		if ((ip[0] >> 4) != 4 || (ip[0] & 0x0f) < 5)
			return -1;
		// More fragments, or a fragment offset: the engine's path.
		if ((ip[6] & 0x3f) != 0 || ip[7] != 0)
			return -1;
		l4 = ip[9];
		iplen = ((__u32)ip[2] << 8) | ip[3];
		l4off = off + (ip[0] & 0x0f) * 4;
		if (iplen < (ip[0] & 0x0f) * 4)
			return -1;
		iplen -= (ip[0] & 0x0f) * 4;
		__builtin_memcpy(k->src, &ip[12], 4);
		__builtin_memcpy(k->dst, &ip[16], 4);
		k->family = 4;
	} else if (type == bpf_htons(ETH_P_IPV6)) {
		__u8 ip[40];
		if (bpf_skb_load_bytes(skb, off, ip, 40) < 0)
			return -1;
		if ((ip[0] >> 4) != 6)
			return -1;
		l4 = ip[6];
		iplen = ((__u32)ip[4] << 8) | ip[5];
		l4off = off + 40;
		__builtin_memcpy(k->src, &ip[8], 16);
		__builtin_memcpy(k->dst, &ip[24], 16);
		k->family = 6;
	} else {
		return -1;
	}
	if (l4 == IPPROTO_TCP) {
		__u8 th[14];
		__u32 hl;
		if (bpf_skb_load_bytes(skb, l4off, th, 14) < 0)
			return -1;
		w->tcp = th[13];
		hl = (th[12] >> 4) * 4;
		if (hl < 20 || hl > iplen)
			return -1;
		__builtin_memcpy(&k->sport, &th[0], 2);
		__builtin_memcpy(&k->dport, &th[2], 2);
		iplen -= hl;
	} else if (l4 == IPPROTO_UDP) {
		__u8 uh[4];
		if (bpf_skb_load_bytes(skb, l4off, uh, 4) < 0)
			return -1;
		if (iplen < 8)
			return -1;
		__builtin_memcpy(&k->sport, &uh[0], 2);
		__builtin_memcpy(&k->dport, &uh[2], 2);
		iplen -= 8;
		w->tcp = 0;
	} else {
		return -1;
	}
	k->proto = l4;
	k->ifindex = skb->ifindex;
	w->l3 = off;
	w->l4 = l4off;
	w->payload = (int)(iplen & 0xffff);
	return 0;
}

// Reads an Ethernet frame (at most one 802.1Q tag) into a key.
static __always_inline int classify(struct __sk_buff *skb, struct flow_key *k, struct where *w)
{
	__u32 off = 12;
	__be16 type;

	if (bpf_skb_load_bytes(skb, off, &type, 2) < 0)
		return -1;
	off += 2;
	if (skb->vlan_present) {
		k->vlan = skb->vlan_tci & 0x0fff;
	}
	if (type == bpf_htons(ETH_P_8021Q)) {
		__be16 tag[2];
		if (skb->vlan_present)
			return -1;  // two tags: the engine's path
		if (bpf_skb_load_bytes(skb, off, tag, 4) < 0)
			return -1;
		k->vlan = bpf_ntohs(tag[0]) & 0x0fff;
		type = tag[1];
		off += 4;
	}
	return classify_l3(skb, k, off, type, w);
}

// Rewrites the source (`src` true) or destination address and port of a TCP segment to the
// entry's, with incremental checksum updates. 0, or -1 when the packet could not be written.
static __always_inline int rewrite(struct __sk_buff *skb, const struct flow_value *v,
				   const struct flow_key *k, const struct where *w, int src)
{
	__u32 csum = w->l4 + 16;
	__u32 port_off = w->l4 + (src ? 0 : 2);
	__be16 old_port = src ? k->sport : k->dport;
	__be16 new_port = v->port;

	if (k->proto != IPPROTO_TCP)
		return -1;
	if (k->family == 4) {
		__be32 old_addr, new_addr;
		__u32 addr_off = w->l3 + (src ? 12 : 16);
		__builtin_memcpy(&old_addr, src ? k->src : k->dst, 4);
		__builtin_memcpy(&new_addr, v->addr, 4);
		if (bpf_l4_csum_replace(skb, csum, old_addr, new_addr, BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, w->l3 + 10, old_addr, new_addr, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) < 0)
			return -1;
	} else {
		__be32 old_addr[4], new_addr[4];
		__u32 addr_off = w->l3 + (src ? 8 : 24);
		__s64 diff;
		__builtin_memcpy(old_addr, src ? k->src : k->dst, 16);
		__builtin_memcpy(new_addr, v->addr, 16);
		diff = bpf_csum_diff(old_addr, 16, new_addr, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum, 0, (__u32)diff, BPF_F_PSEUDO_HDR) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, new_addr, 16, 0) < 0)
			return -1;
	}
	if (bpf_l4_csum_replace(skb, csum, old_port, new_port, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
		return -1;
	return 0;
}

// Carries out a NAT entry (the packet starts at the IP header when `w->l3` is 0: the TUN).
static __always_inline int nat(struct __sk_buff *skb, const struct flow_value *v,
			       const struct flow_key *k, const struct where *w)
{
	if (v->action == ACT_TO_TUN) {
		if (rewrite(skb, v, k, w, 0) < 0)
			return TC_ACT_SHOT;
		// The TUN has no VLANs: a tag left in the metadata would make the stack drop it.
		if (skb->vlan_present && bpf_skb_vlan_pop(skb) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(v->out_ifindex, BPF_F_INGRESS);
	}
	if (v->action == ACT_TO_PORT) {
		__u8 eth[14];
		__be16 proto = k->family == 4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
		if (rewrite(skb, v, k, w, 1) < 0)
			return TC_ACT_SHOT;
		if (w->l3 == 0 && bpf_skb_change_head(skb, 14, 0) < 0)
			return TC_ACT_SHOT;
		__builtin_memcpy(eth, v->eth_dst, 6);
		__builtin_memcpy(eth + 6, v->eth_src, 6);
		__builtin_memcpy(eth + 12, &proto, 2);
		if (bpf_skb_store_bytes(skb, 0, eth, 14, 0) < 0)
			return TC_ACT_SHOT;
		if (v->vlan && bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), v->vlan) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(v->out_ifindex, 0);
	}
	return TC_ACT_SHOT;
}

// What the socket filter decided for a frame, left in skb->cb[0] for the classifier: packet
// taps run before tc ingress, and the two must agree on every frame even while the engine
// changes the map between the two calls (otherwise a frame would reach both paths, or
// neither). cb[1] carries the port to send a kernel frame to.
#define MARK_ENGINE 0x51ce0e01  // accepted by the engine's socket: not redirected
#define MARK_KERNEL 0x51ce0e02  // refused by the socket, counted: redirect to cb[1]
#define MARK_NAT 0x51ce0e03     // refused by the socket, counted: NAT by the classifier

// Counters of the fast path, read by the data plane (per CPU).
enum {
	STAT_REDIRECTED,  // frames the kernel forwarded
	STAT_UNMARKED,    // frames the classifier saw without the filter's mark (decided alone)
	STAT_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &which);
	if (c)
		*c += 1;
}

static __always_inline struct flow_value *lookup_and_count(struct __sk_buff *skb,
							   struct flow_key *k, struct where *w)
{
	struct flow_value *v;

	__builtin_memset(k, 0, sizeof(*k));
	if (classify(skb, k, w) < 0)
		return 0;
	v = bpf_map_lookup_elem(&flows, k);
	if (!v || !carries(v, k, w))
		return 0;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, (__u64)w->payload);
	return v;
}

SEC("socket")
int fastpath_sock(struct __sk_buff *skb)
{
	struct flow_key k;
	struct where w;
	struct flow_value *v = lookup_and_count(skb, &k, &w);

	if (v) {
		skb->cb[0] = v->action == ACT_FORWARD ? MARK_KERNEL : MARK_NAT;
		skb->cb[1] = v->out_ifindex;
		return 0;  // the kernel sends it on: not for the engine
	}
	skb->cb[0] = MARK_ENGINE;
	return skb->len;
}

SEC("classifier")
int fastpath_tc(struct __sk_buff *skb)
{
	__u32 mark = skb->cb[0];
	struct flow_key k;
	struct where w;
	struct flow_value *v;

	skb->cb[0] = 0;
	// Frames left to the stack say nothing (TC_ACT_UNSPEC, TCX_NEXT on a TCX link) rather
	// than pass: the failure program (bypass.c), a netlink filter that runs after TCX links,
	// must still see them, or it could never act while this program is attached (a hung
	// data plane keeps its links).
	if (mark == MARK_ENGINE)
		return TC_ACT_UNSPEC;
	if (mark == MARK_KERNEL) {
		stat(STAT_REDIRECTED);
		return bpf_redirect(skb->cb[1], 0);
	}
	if (mark == MARK_NAT) {
		// Counted by the filter; the entry says how to rewrite. Gone since (the flow just
		// closed): the engine never got it either, so it is dropped and retransmitted.
		__builtin_memset(&k, 0, sizeof(k));
		if (classify(skb, &k, &w) < 0)
			return TC_ACT_SHOT;
		v = bpf_map_lookup_elem(&flows, &k);
		if (!v)
			return TC_ACT_SHOT;
		stat(STAT_REDIRECTED);
		return nat(skb, v, &k, &w);
	}
	// No filter ran for this frame (no receive socket): decide alone.
	stat(STAT_UNMARKED);
	v = lookup_and_count(skb, &k, &w);
	if (!v)
		return TC_ACT_UNSPEC;
	stat(STAT_REDIRECTED);
	if (v->action == ACT_FORWARD)
		return bpf_redirect(v->out_ifindex, 0);
	return nat(skb, v, &k, &w);
}

// Egress of the TUN: packets of the interception engine (raw IP, no link header).
SEC("classifier")
int fastpath_tun(struct __sk_buff *skb)
{
	struct flow_key k;
	struct where w;
	struct flow_value *v;

	__builtin_memset(&k, 0, sizeof(k));
	if (classify_l3(skb, &k, 0, skb->protocol, &w) < 0)
		return TC_ACT_OK;
	v = bpf_map_lookup_elem(&flows, &k);
	if (!v || v->action != ACT_TO_PORT || !carries(v, &k, &w))
		return TC_ACT_OK;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, (__u64)w.payload);
	stat(STAT_REDIRECTED);
	return nat(skb, v, &k, &w);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
