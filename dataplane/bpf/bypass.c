// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Sluice's failure program: a tc ingress classifier on both ports that stays attached when
// the data plane is gone (a netlink filter, not a link that dies with the process). While the
// data plane beats (it writes the monotonic time into `bypass_cfg` every 50 ms) the program
// lets every frame go on to the data plane's path; once the beat is older than `stale_ns`
// (the data plane exited, crashed, hung, or was stopped for an upgrade) it acts as
// `--on-failure` says, with nothing having to act at failure time:
// - open: every frame goes straight to the other port, so the site's traffic keeps flowing
//   uninspected. Frames from or to the addresses in `bypass_hold4`/`bypass_hold6` (the AI
//   destinations the data plane learned, under `--bypass-ai hold`) are dropped instead: a
//   bypass does not become a DLP hole.
// - closed: every frame is dropped (whatever else the host would do with it) and counted.
// `bypass_stats` counts what passed, was held or was refused, for the record of the outage
// the next data plane writes.
//
// It is attached at priority 1, ahead of other netlink filters. While the data plane runs it
// says nothing (TC_ACT_UNSPEC): the next filter, the fast path's classifier where it is a
// netlink filter too (kernels before 6.6, where it outlives a killed process), decides as if
// it were alone. From 6.6 the fast path is a TCX link, which runs before any netlink filter
// and goes with the process.
//
// Built by dataplane/build.rs with `clang -O2 -target bpf`.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Mirrored by `bypass::Cfg` (48 bytes, no padding): keep both in step.
struct bypass_cfg {
	__u64 heartbeat_ns;  // CLOCK_MONOTONIC of the data plane's last beat
	__u64 heartbeat_ms;  // the same instant in Unix ms (for the outage record)
	__u64 stale_ns;      // a beat older than this: bypass
	__u64 netns;         // inode of the ports' network namespace (ifindexes are per namespace)
	__u32 inside;        // the two ports' ifindexes
	__u32 outside;
	__u32 hold_ai;       // drop frames from or to the held addresses while in bypass
	__u32 closed;        // --on-failure closed: drop every frame once stale
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bypass_cfg);
} bypass_cfg SEC(".maps");

enum { STAT_PASSED = 0, STAT_BYTES = 1, STAT_HELD = 2, STAT_REFUSED = 3, STAT_COUNT = 4 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} bypass_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);  // the engine learns at most as many
	__type(key, __u32);   // IPv4 address, network byte order
	__type(value, __u8);
} bypass_hold4 SEC(".maps");

struct v6 {
	__u8 a[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct v6);
	__type(value, __u8);
} bypass_hold6 SEC(".maps");

static __always_inline void count(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&bypass_stats, &stat);
	if (v)
		*v += n;
}

// Whether the frame's source or destination address is held (one 802.1Q tag at most).
static __always_inline int held(struct __sk_buff *skb)
{
	__u16 proto;
	__u32 off = ETH_HLEN;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0)
		return 0;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		if (bpf_skb_load_bytes(skb, 16, &proto, 2) < 0)
			return 0;
		off += 4;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		__u32 addr[2];
		if (bpf_skb_load_bytes(skb, off + 12, addr, 8) < 0)
			return 0;
		return bpf_map_lookup_elem(&bypass_hold4, &addr[0]) ||
		       bpf_map_lookup_elem(&bypass_hold4, &addr[1]);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct v6 src, dst;
		if (bpf_skb_load_bytes(skb, off + 8, &src, 16) < 0 ||
		    bpf_skb_load_bytes(skb, off + 24, &dst, 16) < 0)
			return 0;
		return bpf_map_lookup_elem(&bypass_hold6, &src) ||
		       bpf_map_lookup_elem(&bypass_hold6, &dst);
	}
	return 0;
}

SEC("classifier")
int sluice_bypass(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct bypass_cfg *c = bpf_map_lookup_elem(&bypass_cfg, &zero);
	if (!c)
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();
	if (now < c->heartbeat_ns || now - c->heartbeat_ns <= c->stale_ns)
		return TC_ACT_UNSPEC;
	__u32 peer = skb->ifindex == c->inside ? c->outside : skb->ifindex == c->outside ? c->inside : 0;
	if (!peer)
		return TC_ACT_UNSPEC;
	if (c->closed) {
		count(STAT_REFUSED, 1);
		return TC_ACT_SHOT;
	}
	if (c->hold_ai && held(skb)) {
		count(STAT_HELD, 1);
		return TC_ACT_SHOT;
	}
	count(STAT_PASSED, 1);
	count(STAT_BYTES, skb->len);
	return bpf_redirect(peer, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
