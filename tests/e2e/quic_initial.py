#!/usr/bin/env python3
"""Send the first flight of a real QUIC client (aioquic) to HOST:443 over UDP.

Run inside a lab client. The lab has no QUIC server: the test looks at whether the datagrams
reached the mock upstream (it records UDP datagrams on port 443), i.e. whether the appliance
passed or dropped them.

With --refused, the Initial goes from a connected socket, as browsers send it, and the script
reports whether an ICMP port unreachable came back (the socket fails with ECONNREFUSED) and how
fast: "refused <ms>" or "no answer".
"""
import socket
import sys
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

host, ip = sys.argv[1], sys.argv[2]
refused = "--refused" in sys.argv[3:]
conf = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=host)
conn = QuicConnection(configuration=conf)
addr = (ip, 443)
conn.connect(addr, now=time.time())
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if refused:
    s.connect(addr)
    start = time.monotonic()
    for data, _ in conn.datagrams_to_send(now=time.time()):
        s.send(data)
    s.settimeout(2.0)
    try:
        s.recv(2048)
        print("answered")
    except ConnectionRefusedError:
        print("refused %d" % ((time.monotonic() - start) * 1000))
    except socket.timeout:
        print("no answer")
    sys.exit(0)
sent = 0
for data, _ in conn.datagrams_to_send(now=time.time()):
    s.sendto(data, addr)
    sent += 1
time.sleep(0.5)
print("sent %d datagrams" % sent)
