#!/usr/bin/env python3
"""Send a ClientHello over a hand-made TCP connection, segmented as asked, and report what came
back: `rst` (a reset reached us), `data` (the server answered, e.g. a ServerHello) or `nothing`.

Run inside a lab client (scripts/lab exec HOST -- python3 rawtcp.py ...). Uses scapy; an nft
rule keeps the client's own kernel from resetting the connection it does not know about.

modes:  whole | mss | onebyte | reorder | overlap-conflict | overlap-same
        frag (the segment in 16-byte IP fragments) | frag-conflict (fragments that overlap and
        disagree) | decoy-badsum / decoy-ttl (first the --decoy hello in the same sequence
        range, with a bad TCP checksum / a TTL of 1, then the real one)
"""
import argparse
import random
import subprocess
import sys
import time

from scapy.all import IP, IPv6, TCP, AsyncSniffer, IPv6ExtHdrFragment, conf, fragment, fragment6, send, sr1  # noqa: E402

conf.verb = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--hello", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--decoy", help="the decoy ClientHello (decoy-* modes)")
    args = ap.parse_args()
    hello = open(args.hello, "rb").read()
    v6 = ":" in args.dst
    L3 = (lambda: IPv6(dst=args.dst)) if v6 else (lambda: IP(dst=args.dst))
    sport = random.randint(20000, 60000)
    table = "sluice_rawtcp_%d" % sport
    subprocess.run(["nft", "add", "table", "inet", table], check=True)
    subprocess.run(["nft", "add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }"], check=True)
    subprocess.run(["nft", "add", "rule", "inet", table, "out", "tcp", "sport", str(sport), "tcp", "flags", "rst", "drop"], check=True)
    try:
        isn = random.randint(0, 2**32 - 1)
        synack = sr1(L3() / TCP(sport=sport, dport=args.port, flags="S", seq=isn), timeout=3)
        if synack is None or not synack.haslayer(TCP) or synack[TCP].flags & 0x12 != 0x12:
            print("nosynack")
            return
        sack = synack[TCP].seq + 1
        base = isn + 1
        send(L3() / TCP(sport=sport, dport=args.port, flags="A", seq=base, ack=sack))
        sniffer = AsyncSniffer(filter="tcp and src port %d and dst port %d" % (args.port, sport), store=True)
        sniffer.start()
        time.sleep(0.3)

        def seg(off, data):
            send(L3() / TCP(sport=sport, dport=args.port, flags="PA", seq=base + off, ack=sack) / data)

        if args.mode == "whole":
            seg(0, hello)
        elif args.mode == "mss":
            for i in range(0, len(hello), 1400):
                seg(i, hello[i:i + 1400])
        elif args.mode == "onebyte":
            for i in range(len(hello)):
                seg(i, hello[i:i + 1])
        elif args.mode == "reorder":
            a, b = len(hello) // 3, 2 * len(hello) // 3
            seg(b, hello[b:])
            seg(0, hello[:a])
            seg(a, hello[a:b])
        elif args.mode == "overlap-same":
            seg(0, hello[:200])
            seg(100, hello[100:300])
            seg(300, hello[300:])
        elif args.mode == "overlap-conflict":
            seg(0, hello[:200])
            forged = bytearray(hello[100:300])
            forged[20] ^= 0xFF
            seg(100, bytes(forged))
            seg(300, hello[300:])
        elif args.mode in ("frag", "frag-conflict"):
            tcp = TCP(sport=sport, dport=args.port, flags="PA", seq=base, ack=sack)
            if v6:
                frags = fragment6(IPv6(dst=args.dst) / IPv6ExtHdrFragment() / tcp / hello, 40 + 8 + 16)
            else:
                frags = fragment(IP(dst=args.dst) / tcp / hello, fragsize=16)
            if args.mode == "frag-conflict":
                # A copy of the third fragment with other bytes, sent before the real one: a
                # host keeping the first copy reads another hello than one keeping the last.
                forged = frags[2].copy()
                raw = bytearray(bytes(forged.payload.payload if v6 else forged.payload))
                raw[-1] ^= 0xFF
                # (The protocol set again: scapy would derive it from the new raw payload.)
                if v6:
                    forged.payload.remove_payload()
                    forged.payload.add_payload(bytes(raw))
                    forged[IPv6ExtHdrFragment].nh = 6
                else:
                    forged.remove_payload()
                    forged.add_payload(bytes(raw))
                    forged.proto = 6
                frags.insert(2, forged)
            for f in frags:
                send(f)
        elif args.mode in ("decoy-badsum", "decoy-ttl"):
            decoy = open(args.decoy, "rb").read()
            tcp = TCP(sport=sport, dport=args.port, flags="PA", seq=base, ack=sack)
            if args.mode == "decoy-badsum":
                send(L3() / TCP(sport=sport, dport=args.port, flags="PA", seq=base, ack=sack, chksum=0xBAD) / decoy)
            else:
                ttl = {"hlim": 1} if v6 else {"ttl": 1}
                send((IPv6(dst=args.dst, **ttl) if v6 else IP(dst=args.dst, **ttl)) / tcp / decoy)
            time.sleep(0.2)
            seg(0, hello)
        else:
            sys.exit("unknown mode " + args.mode)
        time.sleep(1.5)
        pkts = sniffer.stop() or []
        if any(p[TCP].flags & 0x04 for p in pkts if p.haslayer(TCP)):
            print("rst")
        elif any(len(p[TCP].payload) > 0 for p in pkts if p.haslayer(TCP)):
            print("data")
        else:
            print("nothing")
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table])


if __name__ == "__main__":
    main()
