// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Sluice's kernel fast path: frames of flows the packet engine has already decided `allow`
// are sent straight from one port to the other by the kernel, without crossing user space.
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
//   (`TC_ACT_OK`; the ports have no addresses, so the host stack drops it). So each frame
//   takes exactly one path, even when the engine changes the map between the two programs.
//
// TCP segments carrying SYN, FIN or RST are never offloaded:
// the engine sees every handshake and every close and keeps the flow's state itself. Only the
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

// Mirrored by `fastpath::Value`.
struct flow_value {
	__u32 out_ifindex;  // port to send it out of
	__u32 pad;
	__u64 packets;      // frames redirected (this direction)
	__u64 bytes;        // their transport payload bytes, as the engine counts them
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);  // set by the loader from --max-flows
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

#define TCP_FLAGS_FIN 0x01
#define TCP_FLAGS_SYN 0x02
#define TCP_FLAGS_RST 0x04

// Reads the frame into a key; returns the payload length (>= 0) or -1 for a frame the fast
// path does not take.
static __always_inline int classify(struct __sk_buff *skb, struct flow_key *k)
{
	__u32 off = 12;
	__be16 type;
	__u8 l4;
	__u32 l4off, iplen;

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
		if (th[13] & (TCP_FLAGS_FIN | TCP_FLAGS_SYN | TCP_FLAGS_RST))
			return -1;
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
	} else {
		return -1;
	}
	k->proto = l4;
	k->ifindex = skb->ifindex;
	return (int)(iplen & 0xffff);
}

// What the socket filter decided for a frame, left in skb->cb[0] for the classifier: packet
// taps run before tc ingress, and the two must agree on every frame even while the engine
// changes the map between the two calls (otherwise a frame would reach both paths, or
// neither). cb[1] carries the port to send a kernel frame to.
#define MARK_ENGINE 0x51ce0e01  // accepted by the engine's socket: not redirected
#define MARK_KERNEL 0x51ce0e02  // refused by the socket, counted: redirect to cb[1]

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

static __always_inline struct flow_value *lookup_and_count(struct __sk_buff *skb)
{
	struct flow_key k;
	struct flow_value *v;
	int payload;

	__builtin_memset(&k, 0, sizeof(k));
	payload = classify(skb, &k);
	if (payload < 0)
		return 0;
	v = bpf_map_lookup_elem(&flows, &k);
	if (!v)
		return 0;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, (__u64)payload);
	return v;
}

SEC("socket")
int fastpath_sock(struct __sk_buff *skb)
{
	struct flow_value *v = lookup_and_count(skb);

	if (v) {
		skb->cb[0] = MARK_KERNEL;
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
	struct flow_value *v;

	skb->cb[0] = 0;
	if (mark == MARK_ENGINE)
		return TC_ACT_OK;
	if (mark == MARK_KERNEL) {
		stat(STAT_REDIRECTED);
		return bpf_redirect(skb->cb[1], 0);
	}
	// No filter ran for this frame (no receive socket): decide alone.
	stat(STAT_UNMARKED);
	v = lookup_and_count(skb);
	if (!v)
		return TC_ACT_OK;
	stat(STAT_REDIRECTED);
	return bpf_redirect(v->out_ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
