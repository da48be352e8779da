#!/usr/bin/env python3
"""Synthesises the ECH ClientHellos kept here from curl's captured hello to api.openai.com (this
machine has no client that speaks ECH to capture from: Debian's curl and OpenSSL 3.0 do not).

- synth-ech-cloudflare-ech.com.bin: real ECH as Cloudflare serves it. The outer SNI is the ECH
  configuration's public name, cloudflare-ech.com; an encrypted_client_hello extension (0xfe0d,
  type outer, HPKE suite X25519/HKDF-SHA256/AES-128-GCM, a 32-byte enc and a 200-byte payload
  standing for the encrypted inner hello) hides the real name.
- synth-grease-ech-api.openai.com.bin: GREASE ECH as Chrome sends it to every server without an
  ECH configuration: the same extension shape with random bytes, and the real SNI outside.
- synth-ech-example.org.bin: the extension with example.org outside: real ECH when sent to an
  address learned for another name (an unlisted ECH public name).
"""
import os
import random
import struct

here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "curl-api.openai.com.bin"), "rb").read()
rng = random.Random(0xFE0D)


def build(sni):
    hs = src[5:]
    assert hs[0] == 1
    body = hs[4:]
    p = 2 + 32
    p += 1 + body[p]                                   # session id
    p += 2 + struct.unpack(">H", body[p:p + 2])[0]     # cipher suites
    p += 1 + body[p]                                   # compression
    exts = body[p + 2:]
    out = b""
    q = 0
    while q < len(exts):
        typ, ln = struct.unpack(">HH", exts[q:q + 4])
        data = exts[q + 4:q + 4 + ln]
        if typ == 0x0000:  # server_name
            name = sni.encode()
            entry = b"\x00" + struct.pack(">H", len(name)) + name
            data = struct.pack(">H", len(entry)) + entry
        if typ != 0x0015:  # padding dropped: lengths change
            out += struct.pack(">HH", typ, len(data)) + data
        q += 4 + ln
    enc = bytes(rng.getrandbits(8) for _ in range(32))
    payload = bytes(rng.getrandbits(8) for _ in range(200))
    ech = b"\x00" + struct.pack(">HH", 0x0020, 0x0001) + bytes([rng.getrandbits(8)])
    ech += struct.pack(">H", len(enc)) + enc + struct.pack(">H", len(payload)) + payload
    out += struct.pack(">HH", 0xFE0D, len(ech)) + ech
    new_body = body[:p] + struct.pack(">H", len(out)) + out
    new_hs = b"\x01" + struct.pack(">I", len(new_body))[1:] + new_body
    return src[:3] + struct.pack(">H", len(new_hs)) + new_hs


for sni, name in (("cloudflare-ech.com", "synth-ech-cloudflare-ech.com.bin"),
                  ("api.openai.com", "synth-grease-ech-api.openai.com.bin"),
                  ("example.org", "synth-ech-example.org.bin")):
    path = os.path.join(here, name)
    data = build(sni)
    open(path, "wb").write(data)
    print("wrote %s (%d bytes)" % (path, len(data)))
