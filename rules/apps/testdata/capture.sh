#!/usr/bin/env bash
# Captures what the lab's own AI clients send, for the app catalog's tests: each client's
# ClientHello (`NAME.hello`, raw TLS records up to the whole hello) and the head of its first
# request (`NAME.head`, over plain HTTP to the same names: the headers an SDK sets do not
# depend on TLS). Runs each client against listeners on 127.0.0.1:443 and :80 inside a private
# namespace whose /etc/hosts points the OpenAI names at them; nothing leaves the machine.
# Needs root, curl, nghttp2-client, openssl, Debian's chromium, the lab's client venv (scripts/lab up: the OpenAI
# Python SDK, httpx with h2) and, for the Node SDK and the Codex CLI,
#   npm install --prefix /var/cache/sluice-lab/npm openai @openai/codex
# A client that is missing is skipped (said). Credentials in the heads are placeholders.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SLUICE_LAB_CACHE:-/var/cache/sluice-lab}
py=$cache/venv/bin/python3
npm_dir=$cache/npm
ns=sluice-apps-$$
ip netns add "$ns"
mkdir -p "/etc/netns/$ns"
trap 'ip netns del "$ns"; rm -rf "/etc/netns/$ns"' EXIT
printf '127.0.0.1 localhost api.openai.com chatgpt.com\n' > "/etc/netns/$ns/hosts"
ip netns exec "$ns" ip link set lo up

listen() { # port output-file: one connection, saved up to the hello (443) or the head (80)
  ip netns exec "$ns" python3 - "$1" "$2" <<'PY'
import socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(15)
buf = b""
def hello_end():
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
    if port == 443:
        end = hello_end()
    else:
        end = buf.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in buf else None
    if end:
        data = buf[:end]
        if port == 80:
            body = b'{"object":"list","data":[]}'
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        open(out, "wb").write(data); break
c.close()
PY
}

capture() { # name scheme client-command...
  local name=$1 scheme=$2; shift 2
  local port=443 out="$here/$name.hello"
  if [ "$scheme" = http ]; then port=80; out="$here/$name.head"; fi
  listen "$port" "$out" &
  local pid=$!
  sleep 0.4
  ip netns exec "$ns" env BASE="$scheme://api.openai.com/v1" "$@" >/dev/null 2>&1 || true
  wait "$pid" || true
  if [ -s "$out" ]; then echo "captured $(basename "$out") ($(stat -c %s "$out") bytes)"; else echo "no capture for $name ($scheme)"; rm -f "$out"; fi
}

both() { # name client-command... (the command reads $BASE)
  local name=$1; shift
  capture "$name" https "$@"
  capture "$name" http "$@"
}

both curl sh -c 'curl -s -m 5 -H "authorization: Bearer sk-capture" "$BASE/models"'
if [ -x "$py" ]; then
  both openai-python "$py" -c '
import os, openai
c = openai.OpenAI(api_key="sk-capture", base_url=os.environ["BASE"], max_retries=0, timeout=5)
c.models.list()'
  both httpx-h2 "$py" -c '
import os, httpx
with httpx.Client(http2=True, timeout=5) as c:
    c.get(os.environ["BASE"] + "/models", headers={"authorization": "Bearer sk-capture"})'
  both python-urllib "$py" -c '
import os, urllib.request
urllib.request.urlopen(os.environ["BASE"] + "/models", timeout=5)'
  # The websockets library offers no ALPN: Python's hello with one extension fewer.
  both python-websockets "$py" -c '
import asyncio, os, ssl, websockets
async def main():
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    url = os.environ["BASE"].replace("http", "ws", 1) + "/realtime"
    async with websockets.connect(url, ssl=ctx if url.startswith("wss") else None, open_timeout=5):
        pass
asyncio.run(main())'
else
  echo "no lab venv at $cache/venv: Python clients skipped"
fi
capture nghttp https sh -c 'nghttp -n -t 5 "$BASE/models"'
capture openssl-s-client https sh -c 'openssl s_client -connect api.openai.com:443 -servername api.openai.com </dev/null'
if [ -d "$npm_dir/node_modules/openai" ]; then
  both openai-node sh -c "cd '$npm_dir' && node -e '
const OpenAI = require(\"openai\");
new OpenAI({ apiKey: \"sk-capture\", baseURL: process.env.BASE, maxRetries: 0, timeout: 5000 }).models.list().catch(() => {});'"
else
  echo "no openai Node SDK in $npm_dir: skipped"
fi
if [ -x "$npm_dir/node_modules/.bin/codex" ]; then
  # Codex takes its base URL from a provider of its own configuration, not from the
  # environment; it asks for a WebSocket first and falls back to HTTP.
  both codex-cli sh -c "cd /tmp && HOME=\$(mktemp -d) OPENAI_API_KEY=sk-capture timeout 20 '$npm_dir/node_modules/.bin/codex' exec --skip-git-repo-check -c model_provider=lab -c \"model_providers.lab={name='lab',base_url='\$BASE',env_key='OPENAI_API_KEY',wire_api='responses'}\" 'say hi'"
else
  echo "no Codex CLI in $npm_dir: skipped"
fi
if command -v chromium >/dev/null; then
  # The browser upgrades openai.com to HTTPS itself (HSTS preload): its plain head goes to
  # the address.
  both chromium sh -c 'case $BASE in http:*) BASE=http://127.0.0.1/v1;; esac; timeout 15 chromium --headless --no-sandbox --disable-gpu --user-data-dir=$(mktemp -d) --dump-dom "$BASE/models"'
else
  echo "no chromium: skipped"
fi
