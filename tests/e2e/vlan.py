#!/usr/bin/env python3
"""802.1Q through the appliance: `send` (in a client) emits tagged frames on eth0; `sniff` (in
wan) waits for them on eth0 and prints how many arrived with the tag and bytes intact.
(This kernel has no 8021q module for VLAN interfaces, so frames are made with scapy.)"""
import sys
import time

from scapy.all import ICMP, IP, UDP, Dot1Q, Ether, Raw, conf, sendp, sniff

conf.verb = 0
MARK = b"sluice-vlan-test"


def frames():
    base = Ether(src="02:00:0a:14:01:0a", dst="ff:ff:ff:ff:ff:ff")
    return [
        base / Dot1Q(vlan=100) / IP(src="10.100.0.10", dst="10.100.0.1") / ICMP() / Raw(MARK),
        base / Dot1Q(vlan=100, prio=5) / IP(src="10.100.0.10", dst="10.100.0.1") / UDP(sport=4000, dport=4001) / Raw(MARK),
    ]


if sys.argv[1] == "send":
    time.sleep(0.5)
    sendp(frames(), iface="eth0")
else:
    want = [bytes(f) for f in frames()]
    got = sniff(iface="eth0", timeout=float(sys.argv[2]) if len(sys.argv) > 2 else 5,
                lfilter=lambda p: MARK in bytes(p))
    intact = sum(1 for p in got if bytes(p) in want)
    print("intact=%d seen=%d" % (intact, len(got)))
