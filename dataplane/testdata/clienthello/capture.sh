#!/usr/bin/env bash
# Captures real ClientHellos into this directory, for the parser's every-prefix tests.
# Runs each client against a listener on 127.0.0.1:443 inside a private namespace whose
# /etc/hosts points the lab names at it. Needs root, curl, openssl, and the lab's client venv
# (scripts/lab up creates it) for the OpenAI Python SDK.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${SLUICE_LAB_CACHE:-/var/cache/sluice-lab}/venv
ns=sluice-capture-$$
ip netns add "$ns"
mkdir -p "/etc/netns/$ns"
trap 'ip netns del "$ns"; rm -rf "/etc/netns/$ns"' EXIT
printf '127.0.0.1 localhost api.openai.com example.org chatgpt.com\n' > "/etc/netns/$ns/hosts"
ip netns exec "$ns" ip link set lo up

capture() { # output-file client-command...
  local out=$1; shift
  ip netns exec "$ns" python3 - "$here/$out" <<'PY' &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 443)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.settimeout(10)
buf = b""
def need():
    # bytes needed for the whole handshake message, across records
    hs, pos = b"", 0
    while pos + 5 <= len(buf):
        n = int.from_bytes(buf[pos+3:pos+5], "big")
        hs += buf[pos+5:pos+5+n]; pos += 5 + n
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            return pos
    return None
while True:
    d = c.recv(65536)
    if not d: break
    buf += d
    end = need()
    if end:
        open(sys.argv[1], "wb").write(buf[:end]); break
c.close()
PY
  local pid=$!
  sleep 0.3
  ip netns exec "$ns" "$@" >/dev/null 2>&1 || true
  wait "$pid"
  echo "captured $out ($(stat -c %s "$here/$out") bytes)"
}

capture curl-api.openai.com.bin curl -sk -m 5 https://api.openai.com/v1/models
capture openssl-api.openai.com.bin sh -c 'openssl s_client -connect api.openai.com:443 -servername api.openai.com -alpn http/1.1 </dev/null'
capture openssl-example.org.bin sh -c 'openssl s_client -connect example.org:443 -servername example.org </dev/null'
capture openssl-no-sni.bin sh -c 'openssl s_client -connect 127.0.0.1:443 -noservername </dev/null'
if [ -x "$venv/bin/python3" ]; then
  capture python-sdk-api.openai.com.bin "$venv/bin/python3" -c '
import openai
c = openai.OpenAI(api_key="sk-capture", max_retries=0, timeout=5)
c.models.list()'
fi
