#!/usr/bin/env python3
"""Synthesises the post-quantum ClientHello kept here: curl's captured hello to api.openai.com
with an X25519MLKEM768 (0x11ec) key share of the real size (1216 bytes) put first, as Chrome and
recent rustls send it, and the group offered first in supported_groups. The result is ~1.8 KB,
so it spans two TCP segments. (This machine has no client that offers X25519MLKEM768 to capture
from: Debian's OpenSSL 3.0 predates ML-KEM.)"""
import os
import random
import struct
import sys

here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "curl-api.openai.com.bin"), "rb").read()
rng = random.Random(0x11EC)

hs = src[5:]
assert hs[0] == 1
body = hs[4:]
p = 2 + 32
p += 1 + body[p]                                   # session id
p += 2 + struct.unpack(">H", body[p:p + 2])[0]     # cipher suites
p += 1 + body[p]                                   # compression
ext_start = p + 2
exts = body[ext_start:]
out_exts = b""
q = 0
while q < len(exts):
    typ, ln = struct.unpack(">HH", exts[q:q + 4])
    data = exts[q + 4:q + 4 + ln]
    if typ == 0x000A:   # supported_groups: 0x11ec first
        groups = data[2:]
        data = struct.pack(">H", len(groups) + 2) + b"\x11\xec" + groups
    elif typ == 0x0033:  # key_share: a 1216-byte X25519MLKEM768 share first
        shares = data[2:]
        share = bytes(rng.getrandbits(8) for _ in range(1216))
        shares = struct.pack(">HH", 0x11EC, len(share)) + share + shares
        data = struct.pack(">H", len(shares)) + shares
    out_exts += struct.pack(">HH", typ, len(data)) + data
    q += 4 + ln
new_body = body[:p] + struct.pack(">H", len(out_exts)) + out_exts
new_hs = b"\x01" + struct.pack(">I", len(new_body))[1:] + new_body
record = src[:3] + struct.pack(">H", len(new_hs)) + new_hs
out = os.path.join(here, "synth-x25519mlkem768-api.openai.com.bin")
open(out, "wb").write(record)
print("wrote %s (%d bytes)" % (out, len(record)))
