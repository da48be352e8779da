"""Sends raw bytes over TLS and prints what came back (for requests curl will not send:
smuggling forms, fronting). Trusts SSL_CERT_FILE.

Usage: rawhttps.py --host NAME [--ip ADDR] --send 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'
Prints the issuer CN of the server certificate on the first line, then the response.
"""
import argparse
import socket
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--ip")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--send", required=True, help="bytes to send; Python escapes (\\r\\n) decoded")
    a = ap.parse_args()
    data = a.send.encode().decode("unicode_escape").encode("latin-1")
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((a.ip or a.host, a.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=a.host) as s:
            issuer = dict(x[0] for x in s.getpeercert()["issuer"]).get("commonName", "")
            print("issuer:", issuer)
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not chunk:
                    break
                out += chunk
            sys.stdout.write(out.decode("utf-8", "replace"))


if __name__ == "__main__":
    main()
