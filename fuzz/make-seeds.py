#!/usr/bin/env python3
"""Writes seed inputs for the frame, engine and nat fuzz targets (scapy, from the lab venv):
real-shaped frames carrying the captured ClientHello and the RFC 9001 QUIC Initial; and for
app_request, the lab clients' captured request heads."""
import os
import struct

from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6, raw

here = os.path.dirname(os.path.abspath(__file__))
td = os.path.join(here, "..", "dataplane", "testdata")
hello = open(os.path.join(td, "clienthello", "curl-api.openai.com.bin"), "rb").read()
quic = bytes.fromhex("".join(open(os.path.join(td, "quic", "rfc9001-a2-client-initial.hex")).read().split()))
eth = Ether(src="02:00:0a:14:09:63", dst="02:00:0a:14:00:01")
frames = {
    "syn": eth / IP(src="10.20.9.99", dst="198.51.100.10") / TCP(sport=40000, dport=443, flags="S", seq=1000),
    "hello": eth / IP(src="10.20.9.99", dst="198.51.100.10") / TCP(sport=40000, dport=443, flags="PA", seq=1001, ack=5) / hello,
    "hello-v6-vlan": eth / Dot1Q(vlan=100) / IPv6(src="fd20::9:99", dst="2001:db8:5100::10") / TCP(sport=40001, dport=443, flags="PA", seq=1, ack=1) / hello,
    "quic": eth / IP(src="10.20.9.99", dst="198.51.100.10") / UDP(sport=50000, dport=443) / quic,
}
for name, f in frames.items():
    b = raw(f)
    for target, data in (("frame", b), ("nat", b[14:] if name != "hello-v6-vlan" else b[18:])):
        d = os.path.join(here, "corpus", target)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "seed-" + name), "wb").write(data)
# engine: [side/len-flags][len][frame]..., frames cut to 255 (+256) bytes as the target reads them
seq = b""
for name in ("syn", "hello"):
    b = raw(frames[name])
    n = min(len(b), 511)
    flags = 0x02 if n > 255 else 0
    seq += bytes([flags, n - (256 if flags else 0)]) + b[:n]
os.makedirs(os.path.join(here, "corpus", "engine"), exist_ok=True)
open(os.path.join(here, "corpus", "engine", "seed-syn-hello"), "wb").write(seq)
# app_request: the lab clients' captured heads (rules/apps/testdata), host and path first
apps = os.path.join(here, "..", "rules", "apps", "testdata")
d = os.path.join(here, "corpus", "app_request")
os.makedirs(d, exist_ok=True)
for f in sorted(os.listdir(apps)):
    if f.endswith(".head"):
        lines = open(os.path.join(apps, f), "rb").read().replace(b"\r", b"").split(b"\n")[1:]
        open(os.path.join(d, "seed-" + f[:-5]), "wb").write(b"api.openai.com /v1/chat/completions\n" + b"\n".join(lines))
print("seeds written")
