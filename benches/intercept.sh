#!/usr/bin/env bash
# Interception benchmark, all in one run on the lab. Every row talks to the same origin, nginx
# (HTTPS, HTTP/2 and HTTP/1.1, keep-alive, reads the whole body, answers a fixed chat-completion
# JSON), from alice:
#   - sluice inspecting (divert, minted leaf, strict upstream TLS, HTTP/1.1 or HTTP/2 phases),
#   - sluice splicing (bob: diverted, decided allow, bytes relayed; keep-alive, HTTP/2 and bulk:
#     the ceiling of the inspecting rows on the same path),
#   - sluice inspecting with --fast-path off (the divert NAT done by the engine, not the kernel),
#   - a plain Linux bridge (direct: the reference for added latency and bulk),
#   - mitmproxy (mitmdump -q, reverse mode, same enterprise CA, upstream verified; HTTP/2 too),
#   - Squid as its users run it: squid-openssl 5.7, transparent `ssl-bump` (peek, then bump)
#     on intercepted port 443 (nft redirect of alice's flows to the origin), certificates
#     minted by the enterprise CA, one worker, persistent connections both sides, upstream
#     verified (`sslproxy_cert_error deny all`), cache off.
# HTTP/1.1 rows: wrk, 2 KB JSON POSTs, keep-alive and one connection per request.
# HTTP/2 rows: h2load, the same POSTs, CONNS streams over 2 connections.
# Bulk rows: one connection's download of 1 GiB, and upload of 64 x 8 MB bodies (each held
# and inspected), through sluice inspecting and splicing, and direct; GB/s, and GB per CPU-second of
# sluice-dataplane. Each proxy's CPU time is read too (sluice: the data plane; Squid; mitmproxy).
# RUNS rounds; each round measures every row once, in turn, so the machine's drift (it is
# shared and noisy) hits every row alike. Prints each row's samples and medians (requests/s,
# p50, p99), the ratios of the medians and the ratio within each round. Needs root.
#   benches/intercept.sh              (RUNS=3 SECS=5 CONNS=16 by default)
#   ONLY='inspect-new|direct-new' benches/intercept.sh   measures only the rows whose keys match
#                                                        (no ratios; for profiling one path)
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_LAB=${SLUICE_LAB:-slb}
RUNS=${RUNS:-3}
SECS=${SECS:-5}
CONNS=${CONNS:-16}
ONLY=${ONLY:-}
lab=scripts/lab
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v squid >/dev/null || need+=(squid-openssl)
command -v nginx >/dev/null || need+=(nginx-light)
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  # Debian starts the packages' own services; the bench runs its own instances.
  systemctl disable --now squid nginx >/dev/null 2>&1 || true
fi
BENCH_VENV=${SLUICE_LAB_CACHE:-/var/cache/sluice-lab}/bench-venv
if [ ! -x "$BENCH_VENV/bin/mitmdump" ]; then
  python3 -m venv "$BENCH_VENV" && "$BENCH_VENV/bin/pip" install -q mitmproxy
fi
$lab down >/dev/null 2>&1 || true
trap '$lab down >/dev/null 2>&1 || true' EXIT
$lab up >/dev/null
cargo build --release --locked -q -p sluice-dataplane -p sluice-control
STATE=$(scripts/lab env | sed -n 's/^export SLUICE_LAB_STATE=//p')
PKI=$STATE/pki
W=$STATE/bench
mkdir -p "$W"
wan() { ip netns exec "$SLUICE_LAB-wan" "$@"; }
appl() { ip netns exec "$SLUICE_LAB-appl" "$@"; }

# --- origin and reference proxies in the "internet" (wan) namespace
issue() { # name signer out
  openssl ecparam -name prime256v1 -genkey -noout -out "$3.key" 2>/dev/null
  openssl req -new -key "$3.key" -subj "/CN=$1" -out "$3.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$1" > "$3.ext"
  openssl x509 -req -in "$3.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 30 -extfile "$3.ext" -out "$3.crt" 2>/dev/null
  chmod 600 "$3.key"
}
issue bench.lab "$PKI/lab-root" "$W/origin"
for oct in 90 91; do wan ip addr add "198.51.100.$oct/32" dev lo; done
printf '198.51.100.90 bench.lab\n198.51.100.91 mitm.bench.lab\n' >> "$STATE/hosts"
kill -HUP "$(cat "$STATE/dnsmasq.pid")"
BODY='{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
mkdir -p "$W/www/bulk" "$W/nginx-tmp"
truncate -s 1G "$W/www/bulk/1g"
cat > "$W/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_max_body_size 0;
  client_body_temp_path $W/nginx-tmp;
  proxy_temp_path $W/nginx-tmp;
  fastcgi_temp_path $W/nginx-tmp;
  uwsgi_temp_path $W/nginx-tmp;
  scgi_temp_path $W/nginx-tmp;
  server {
    listen 198.51.100.90:443 ssl http2;
    ssl_certificate $W/origin.crt;
    ssl_certificate_key $W/origin.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    http2_max_requests 10000000;
    location /bulk/ { root $W/www; }
    # Every body is read whole before the answer. A plain \`return\` answers at once and
    # discards the body; nginx then closes the connection once the response is out, and a
    # proxy whose bumped connection is pinned to that server connection (Squid) has to close
    # the client's too: every request paid for two new TLS connections (Squid measured ~270
    # requests/s with 16 connections that way, ~10,800 against this origin).
    location / { echo_read_request_body; default_type application/json; echo '$BODY'; }
  }
}
CONF
wan nginx -c "$W/nginx.conf" -g 'daemon off;' > "$W/nginx.log" 2>&1 &
ORIGIN=$!
mkdir -p "$W/mitm"
cat "$PKI/enterprise-ca.key" "$PKI/enterprise-ca.crt" > "$W/mitm/mitmproxy-ca.pem"
wan "$BENCH_VENV/bin/mitmdump" -q --listen-host 198.51.100.91 --listen-port 443 --mode reverse:https://bench.lab:443 \
  --set confdir="$W/mitm" --set ssl_verify_upstream_trusted_ca="$PKI/lab-root.crt" > "$W/mitm.log" 2>&1 &
MITM=$!
/usr/lib/squid/security_file_certgen -c -s "$W/ssl_db" -M 16MB >/dev/null
cat > "$W/squid.conf" <<CONF
http_port 127.0.0.1:3199
https_port 3129 intercept ssl-bump tls-cert=$PKI/enterprise-ca.crt tls-key=$PKI/enterprise-ca.key generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $W/ssl_db -M 16MB
sslcrtd_children 4
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
sslproxy_cert_error deny all
tls_outgoing_options cafile=$PKI/lab-root.crt
http_access allow all
cache deny all
workers 1
client_persistent_connections on
server_persistent_connections on
pid_filename $W/squid.pid
access_log none
cache_log $W/squid-cache.log
coredump_dir $W
CONF
chown -R proxy:proxy "$W/ssl_db" 2>/dev/null || true
wan squid -N -f "$W/squid.conf" > "$W/squid.log" 2>&1 &
SQUID=$!
# Squid sits where a transparent proxy sits: alice's flows to the origin are redirected to it
# (its own upstream connections leave from the router, not through prerouting).
squid_on() {
  wan nft add table ip sluicebench
  wan nft add chain ip sluicebench pre '{ type nat hook prerouting priority -100; }'
  wan nft add rule ip sluicebench pre ip saddr 10.20.1.10 ip daddr 198.51.100.90 tcp dport 443 redirect to :3129
}
squid_off() { wan nft delete table ip sluicebench; }
cleanup_refs() { kill "$ORIGIN" "$MITM" "$SQUID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'cleanup_refs; $lab down >/dev/null 2>&1 || true' EXIT
sleep 3

# --- the request: POST of a 2 KB chat prompt (benches/prompt.txt: prose, which compresses as
# prompts do, about 1.8x; a repeated sentence would flatter anything that compresses)
python3 - "$W/post.lua" "$W/post.json" benches/prompt.txt <<'PY'
import json, sys
prompt = open(sys.argv[3]).read().strip()
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
with open(sys.argv[2], "w") as f:
    f.write(body)
with open(sys.argv[1], "w") as f:
    f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    f.write('wrk.headers["Authorization"] = "Bearer sk-bench-0000"\n')
    f.write("wrk.body = %s\n" % json.dumps(body))
    f.write('if os.getenv("WRK_CLOSE") == "1" then wrk.headers["Connection"] = "close" end\n')
PY

# 8 MB upload bodies (under the 8 MiB inspection limit: each is held whole and inspected).
head -c 6000000 /dev/urandom | base64 -w 0 > "$W/8m.bin"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'; }

declare -A RPS P50 P99 REQS TICKS LABEL SAMPLES WHO
# Whose CPU time the rows being measured count: sluice's data plane, squid, mitmproxy, or
# nobody (direct).
PROXY=sluice
# CPU time (ticks of 1/100 s) that proxy has used so far (0 when it is not running): its
# threads and the kernel work done in their system calls.
cpu_ticks() {
  local pids=() p t=0
  case $PROXY in
    sluice) pids=("$(cat "$STATE/dataplane.pid" 2>/dev/null)") ;;
    squid) pids=("$(cat "$W/squid.pid" 2>/dev/null)") ;;
    mitm) mapfile -t pids < <(pgrep -f "$BENCH_VENV/bin/mitmdump -q --listen-host 198.51.100.91") ;;
  esac
  for p in "${pids[@]}"; do
    [ -n "$p" ] && [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
ORDER=()
sample() { # key label host url close [connections]: one SECS-long wrk run, kept for report
  local out t0 conns=${6:-$CONNS}
  if [ -n "$ONLY" ] && ! grep -qE "^($ONLY)\$" <<<"$1"; then return; fi
  [ -n "${LABEL[$1]:-}" ] || ORDER+=("$1")
  LABEL[$1]=$2
  WHO[$1]=$PROXY
  t0=$(cpu_ticks)
  out=$($lab exec "$3" -- env WRK_CLOSE="$5" wrk -t"$((conns < 2 ? 1 : 2))" -c"$conns" -d"${SECS}s" --latency -s "$W/post.lua" "$4" 2>&1)
  if ! grep -q "Requests/sec" <<<"$out"; then echo "$out" >&2; echo "wrk failed for $2" >&2; exit 1; fi
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$out" >&2; echo "non-2xx responses for $2; refusals recorded:" >&2
    grep '"type":"request"' "$STATE/flows.jsonl" | grep -v '"status":200' | tail -3 >&2 || true
    tail -5 "$STATE/dataplane.log" >&2
    exit 1
  fi
  # Requests per CPU-second of the proxy (softirq work on other threads is not in it).
  TICKS[$1]=$(( ${TICKS[$1]:-0} + $(cpu_ticks) - t0 ))
  REQS[$1]=$(( ${REQS[$1]:-0} + $(awk '/requests in/ {print $1}' <<<"$out") ))
  RPS[$1]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
  P50[$1]+="$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms) "
  P99[$1]+="$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms) "
}
# h2load: CONNS streams over 2 connections for SECS seconds (h2load reports mean and max
# latency, kept in P50 and P99).
sample_h2() { # key label host url
  local out t0
  if [ -n "$ONLY" ] && ! grep -qE "^($ONLY)\$" <<<"$1"; then return; fi
  [ -n "${LABEL[$1]:-}" ] || ORDER+=("$1")
  LABEL[$1]=$2
  WHO[$1]=$PROXY
  t0=$(cpu_ticks)
  out=$($lab exec "$3" -- h2load -c 2 -m "$((CONNS / 2))" -D "$SECS" -d "$W/post.json" \
    -H 'content-type: application/json' -H 'authorization: Bearer sk-bench-0000' "$4" 2>&1)
  if ! grep -qE "status codes: [0-9]+ 2xx, 0 3xx, 0 4xx, 0 5xx" <<<"$out" || ! grep -q " 0 failed, 0 errored" <<<"$out"; then
    echo "$out" >&2; echo "h2load failed for $2" >&2; exit 1
  fi
  TICKS[$1]=$(( ${TICKS[$1]:-0} + $(cpu_ticks) - t0 ))
  REQS[$1]=$(( ${REQS[$1]:-0} + $(awk '/^requests:/ {print $8}' <<<"$out") ))
  RPS[$1]+="$(awk '/^finished in/ {print $4}' <<<"$out") "
  P50[$1]+="$(awk '/^time for request:/ {print $6}' <<<"$out" | to_ms) "
  P99[$1]+="$(awk '/^time for request:/ {print $5}' <<<"$out" | to_ms) "
}
# One connection's bulk transfer: `down` (GET 1 GiB) or `up` (64 POSTs of 8 MB, each held
# and inspected); GB/s in RPS, bytes in REQS.
sample_bulk() { # key label host base-url down|up
  local out t0 w0 w1 bytes urls=()
  if [ -n "$ONLY" ] && ! grep -qE "^($ONLY)\$" <<<"$1"; then return; fi
  [ -n "${LABEL[$1]:-}" ] || ORDER+=("$1")
  LABEL[$1]=$2
  WHO[$1]=$PROXY
  t0=$(cpu_ticks)
  w0=$(date +%s.%N)
  # A failed transfer says so (curl's exit code and message) instead of ending the run silently.
  local rc=0
  if [ "$5" = down ]; then
    out=$($lab exec "$3" -- curl -sS -m 120 -o /dev/null -w '%{http_code} %{size_download}\n' "$4/bulk/1g" 2>&1) || rc=$?
  else
    for _ in $(seq 64); do urls+=("$4/upload" -o /dev/null); done
    out=$($lab exec "$3" -- curl -sS -m 300 -H 'content-type: application/octet-stream' \
      --data-binary "@$W/8m.bin" -w '%{http_code} %{size_upload}\n' "${urls[@]}" 2>&1) || rc=$?
  fi
  if [ "$rc" != 0 ]; then
    echo "$out" | tail -3 >&2; echo "bulk transfer failed for $2 (curl exit $rc)" >&2
    tail -5 "$STATE/dataplane.log" >&2
    exit 1
  fi
  w1=$(date +%s.%N)
  if grep -qv '^200 ' <<<"$out"; then echo "$out" >&2; echo "bulk transfer failed for $2" >&2; exit 1; fi
  bytes=$(awk '{s += $2} END {print s}' <<<"$out")
  TICKS[$1]=$(( ${TICKS[$1]:-0} + $(cpu_ticks) - t0 ))
  REQS[$1]=$(( ${REQS[$1]:-0} + bytes ))
  RPS[$1]+="$(awk -v b="$bytes" -v a="$w0" -v z="$w1" 'BEGIN { printf "%.3f", b / (z - a) / 1e9 }') "
  P50[$1]+="0 "
  P99[$1]+="0 "
}
med() { tr ' ' '\n' <<<"$1" | grep . | median; }
# The ports bridged in place of the appliance (direct path, reference proxies) or not.
bridge() {
  # The stopped data plane leaves its failure program on the ports (ARCHITECTURE.md, "Failure":
  # under the lab's --on-failure closed it drops every frame once the beat is stale); the
  # references run over a plain bridge, so it goes (the next start installs it again).
  for port in inside outside; do appl tc qdisc del dev "$port" clsact 2>/dev/null || true; done
  appl ip link add br0 type bridge
  appl ip link set inside master br0
  appl ip link set outside master br0
  appl ip link set br0 up
}
unbridge() {
  appl ip link set inside nomaster
  appl ip link set outside nomaster
  appl ip link del br0
}

# --- sluice: alice's bench traffic inspected, bob's diverted and spliced
cat > "$W/rules.toml" <<'TOML'
[defaults]
action = "allow"
on_inspect_failure = "block"
max_inspect_bytes = 8388608
divert = "all"
tls_ports = [443]

[[identity]]
name = "finance"
cidrs = ["10.20.1.0/24"]

[[identity]]
name = "engineering"
cidrs = ["10.20.2.0/24"]

[[category]]
name = "bench"
domains = ["bench.lab"]

[[category]]
name = "elsewhere"
domains = ["elsewhere.lab"]

[[rule]]
name = "finance-bench-inspect"
identities = ["finance"]
categories = ["bench"]
action = "inspect"

# Makes engineering's TLS flows diverted (divert = "all"), so bench.lab is spliced for bob.
[[rule]]
name = "engineering-elsewhere-inspect"
identities = ["engineering"]
categories = ["elsewhere"]
action = "inspect"
TOML
# The same with the API key brokered (issue 16): alice's placeholder replaced by a key control
# holds, pushed over the link.
sed '0,/^action = "inspect"$/s//action = "inspect"\nbroker_key = "bench"/' "$W/rules.toml" > "$W/rules-broker.toml"
printf 'sk-proj-benchbrokeredkey0123456789\n' > "$W/bench.key"
# Recording (request and response, sealed with age to a key made for the bench), a quota that
# never trips (it is counted, every request), and all three access controls together.
target/release/sluicectl sessions keygen "$W/rec.key" > "$W/rec.pub" 2>/dev/null ||
  { rm -f "$W/rec.key"; target/release/sluicectl sessions keygen "$W/rec.key" > "$W/rec.pub"; }
RECORD="recording_recipients = [\"$(cat "$W/rec.pub")\"]"
QUOTA='quota = { by = "identity", requests_per_minute = 1000000000, tokens_per_day = 1000000000000 }'
access_rules() { # $1: the lines added to alice's rule
  sed "0,/^tls_ports = \[443\]\$/s//tls_ports = [443]\n$RECORD/" "$W/rules.toml" |
    sed "0,/^action = \"inspect\"\$/s//action = \"inspect\"\n$1/"
}
access_rules 'record = "request+response"' > "$W/rules-record.toml"
# Apps and operations decided per request (issue 17): alice's rule names apps and operations,
# and a rule after it refuses every other client, as the default sandbox does. Requests are
# identified (catalog header matchers) and the policy decides each again; the rows without it
# identify each request too (for the records), so the ratio is the per-request decision.
# (wrk's hello is OpenSSL's own, the catalog's openssl-cli.)
sed '0,/^action = "inspect"$/s//apps = ["openssl-cli", "curl", "openai-python"]\noperations = ["chat", "other"]\naction = "inspect"/' "$W/rules.toml" \
  > "$W/rules-apps.toml"
cat >> "$W/rules-apps.toml" <<'TOML'

[[rule]]
name = "finance-bench-sandbox"
identities = ["finance"]
categories = ["bench"]
action = "block"
TOML
access_rules "$QUOTA" > "$W/rules-quota.toml"
access_rules "broker_key = \"bench\"\nrecord = \"request+response\"\n$QUOTA" > "$W/rules-all.toml"
store_bench_key() {
  curl -sS --fail-with-body --cacert "$STATE/control/state/api.crt" \
    -H "Authorization: Bearer $(cat "$STATE/control/admin.token")" -X PUT --data-binary "@$W/bench.key" \
    "$(cat "$STATE/control/url")/v1/keys/bench" >/dev/null
}
echo "== $RUNS rounds x ${SECS}s per row, $CONNS connections, 2 KB JSON POSTs (rows take turns round by round)"
# The host: ratios between these rows move with it (system calls cost more under some
# mitigations, which weighs on the rows with more kernel work per request).
echo "== host: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r);" \
  "retbleed: $(cat /sys/devices/system/cpu/vulnerabilities/retbleed 2>/dev/null || echo unknown)"
URL=https://bench.lab/v1/chat/completions
for round in $(seq "$RUNS"); do
  $lab start --rules "$W/rules.toml" >/dev/null
  sample inspect-ka "sluice inspect (keep-alive)" alice $URL 0
  sample inspect-new "sluice inspect (new conn/request)" alice $URL 1
  # One connection, one request at a time: the latency the path adds, without queueing behind
  # the other connections on two shared cores (under saturation p50 is connections/throughput).
  sample inspect-1 "sluice inspect (1 conn, keep-alive)" alice $URL 0 1
  sample splice-ka "sluice splice (keep-alive)" bob $URL 0
  sample splice-new "sluice splice (new conn/request)" bob $URL 1
  sample_h2 inspect-h2 "sluice inspect, HTTP/2 (h2load)" alice $URL
  sample_bulk inspect-down "sluice inspect, 1 GiB download" alice https://bench.lab down
  sample_bulk inspect-up "sluice inspect, 64 x 8 MB uploads" alice https://bench.lab up
  # What the same path does without inspecting (the ceiling of the rows above): bob's flows
  # are diverted and their bytes relayed by the same engine.
  sample_h2 splice-h2 "sluice splice, HTTP/2 (h2load)" bob $URL
  sample_bulk splice-down "sluice splice, 1 GiB download" bob https://bench.lab down
  sample_bulk splice-up "sluice splice, 64 x 8 MB uploads" bob https://bench.lab up
  if [ -z "$ONLY" ] || grep -qE "^($ONLY)\$" <<<inspect-apps-ka; then
    $lab start --rules "$W/rules-apps.toml" >/dev/null
    sample inspect-apps-ka "sluice inspect, apps decided per request" alice $URL 0
    # The requests were decided one by one: one whose operation the rule does not name is refused.
    code=$($lab exec alice -- curl -sk -o /dev/null -w '%{http_code}' -d '{}' https://bench.lab/v1/fine_tuning/jobs)
    [ "$code" = 403 ] || { echo "a fine-tune request passed the per-request rule ($code)" >&2; exit 1; }
  fi
  if [ -z "$ONLY" ] || grep -qE "^($ONLY)\$" <<<inspect-broker-ka; then
    store_bench_key
    $lab start --rules "$W/rules-broker.toml" >/dev/null
    sample inspect-broker-ka "sluice inspect, key brokered (k-a)" alice $URL 0
    grep -q '"broker_key":"bench"' "$STATE/flows.jsonl" || { echo "no brokered request recorded" >&2; exit 1; }
  fi
  if [ -z "$ONLY" ] || grep -qE "^($ONLY)\$" <<<inspect-record-ka; then
    $lab start --rules "$W/rules-record.toml" >/dev/null
    sample inspect-record-ka "sluice inspect, recorded (k-a)" alice $URL 0
    sample inspect-record-1 "sluice inspect, recorded (1 conn, k-a)" alice $URL 0 1
    grep -q '"recording":{"id":"rec_' "$STATE/flows.jsonl" || { echo "no recording made" >&2; exit 1; }
  fi
  if [ -z "$ONLY" ] || grep -qE "^($ONLY)\$" <<<inspect-quota-ka; then
    $lab start --rules "$W/rules-quota.toml" >/dev/null
    sample inspect-quota-ka "sluice inspect, quota counted (k-a)" alice $URL 0
    grep -q '"quota":"identity:finance"' "$STATE/flows.jsonl" || { echo "no request counted" >&2; exit 1; }
  fi
  if [ -z "$ONLY" ] || grep -qE "^($ONLY)\$" <<<inspect-all-ka; then
    store_bench_key
    $lab start --rules "$W/rules-all.toml" >/dev/null
    sample inspect-all-ka "sluice inspect, broker+record+quota (k-a)" alice $URL 0
  fi
  $lab stop >/dev/null
  # The same without the kernel fast path: every diverted packet NAT-ed by the engine.
  SLUICE_DATAPLANE_ARGS="--fast-path off" $lab start --rules "$W/rules.toml" >/dev/null
  sample inspect-ka-off "sluice inspect, no fast path (k-a)" alice $URL 0
  sample inspect-new-off "sluice inspect, no fast path (new)" alice $URL 1
  $lab stop >/dev/null
  bridge
  PROXY=
  sample direct-ka "direct, Linux bridge (keep-alive)" alice $URL 0
  sample direct-new "direct, Linux bridge (new conn/request)" alice $URL 1
  sample direct-1 "direct, Linux bridge (1 conn, k-a)" alice $URL 0 1
  sample_h2 direct-h2 "direct, HTTP/2 (h2load)" alice $URL
  sample_bulk direct-down "direct, 1 GiB download" alice https://bench.lab down
  sample_bulk direct-up "direct, 64 x 8 MB uploads" alice https://bench.lab up
  PROXY=mitm
  sample mitm-ka "mitmproxy (keep-alive)" alice https://mitm.bench.lab/v1/chat/completions 0
  sample mitm-new "mitmproxy (new conn/request)" alice https://mitm.bench.lab/v1/chat/completions 1
  sample_h2 mitm-h2 "mitmproxy, HTTP/2 (h2load)" alice https://mitm.bench.lab/v1/chat/completions
  PROXY=squid
  squid_on
  sample squid-ka "squid ssl-bump (keep-alive)" alice $URL 0
  sample squid-new "squid ssl-bump (new conn/request)" alice $URL 1
  squid_off
  PROXY=sluice
  unbridge
  echo "   round $round of $RUNS done" >&2
done
for k in "${ORDER[@]}"; do
  PER=""
  case ${WHO[$k]} in sluice) whose=data-plane ;; mitm) whose=mitmproxy ;; *) whose=${WHO[$k]} ;; esac
  if [ "${TICKS[$k]}" -gt 0 ]; then
    PER=$(awk -v n="${REQS[$k]}" -v t="${TICKS[$k]}" -v w="$whose" 'BEGIN { printf "   %.0f per %s CPU-s", n / (t / 100), w }')
  fi
  case $k in
    *-down|*-up)
      [ "${TICKS[$k]}" -gt 0 ] && PER=$(awk -v n="${REQS[$k]}" -v t="${TICKS[$k]}" 'BEGIN { printf "   %.2f GB per data-plane CPU-s", n / 1e9 / (t / 100) }')
      printf '%-40s %9.2f GB/s  (%s)%s\n' "${LABEL[$k]}" "$(med "${RPS[$k]}")" "$(tr ' ' '/' <<<"${RPS[$k]% }")" "$PER" ;;
    *-h2)
      printf '%-40s %9.0f req/s (%s)  mean %5.2f ms  max %6.2f ms%s\n' "${LABEL[$k]}" "$(med "${RPS[$k]}")" \
        "$(tr ' ' '/' <<<"${RPS[$k]% }")" "$(med "${P50[$k]}")" "$(med "${P99[$k]}")" "$PER" ;;
    *)
      printf '%-40s %9.0f req/s (%s)  p50 %6.2f ms   p99 %6.2f ms%s\n' "${LABEL[$k]}" "$(med "${RPS[$k]}")" \
        "$(tr ' ' '/' <<<"${RPS[$k]% }")" "$(med "${P50[$k]}")" "$(med "${P99[$k]}")" "$PER" ;;
  esac
  SAMPLES[$k]=${RPS[$k]}
  RPS[$k]=$(med "${RPS[$k]}")
  P50[$k]=$(med "${P50[$k]}")
done
# a over b in each round: "12.3x / 11.0x / ..."
per_round() {
  paste -d' ' <(tr ' ' '\n' <<<"${SAMPLES[$1]}" | grep .) <(tr ' ' '\n' <<<"${SAMPLES[$2]}" | grep .) |
    awk '{ printf "%s%.2fx", (NR > 1 ? " / " : ""), $1 / $2 }'
}
for row in apps broker record quota all; do
  k=inspect-$row-ka
  if [ -n "${RPS[$k]:-}" ] && [ -n "${RPS[inspect-ka]:-}" ]; then
    awk -v b="${RPS[$k]}" -v s="${RPS[inspect-ka]}" -v r="$row" \
      'BEGIN { printf "keep-alive  sluice inspect with %-7s / without %5.2fx\n", (r == "all" ? "all 3" : r), b / s }'
    echo "  per round: $(per_round "$k" inspect-ka)"
  fi
done
if [ -n "${P50[inspect-record-1]:-}" ] && [ -n "${P50[inspect-1]:-}" ]; then
  awk -v a="${P50[inspect-record-1]}" -v b="${P50[inspect-1]}" \
    'BEGIN { printf "added p50 latency of recording (request+response, 1 connection): %.3f ms\n", a - b }'
fi
if [ -n "$ONLY" ]; then exit 0; fi
echo "== ratios (requests/s)"
for mode in ka new; do
  awk -v m="$mode" -v s="${RPS[inspect-$mode]}" -v mi="${RPS[mitm-$mode]}" -v sq="${RPS[squid-$mode]}" \
    'BEGIN { printf "%-9s sluice inspect / mitmproxy %6.1fx   / squid %5.2fx\n", (m == "ka" ? "keep-alive" : "new-conn"), s / mi, s / sq }'
  echo "  per round: mitmproxy $(per_round "inspect-$mode" "mitm-$mode"); squid $(per_round "inspect-$mode" "squid-$mode")"
done
awk -v s="${RPS[inspect-ka]}" -v d="${RPS[direct-ka]}" \
  'BEGIN { printf "keep-alive  sluice inspect / direct      %6.2fx\n", s / d }'
echo "  per round: $(per_round inspect-ka direct-ka)"
awk -v s="${RPS[inspect-h2]}" -v m="${RPS[mitm-h2]}" -v d="${RPS[direct-h2]}" \
  'BEGIN { printf "HTTP/2      sluice inspect / mitmproxy %6.1fx   / direct %5.2fx\n", s / m, s / d }'
echo "  per round: mitmproxy $(per_round inspect-h2 mitm-h2); direct $(per_round inspect-h2 direct-h2)"
for dir in down up; do
  awk -v s="${RPS[inspect-$dir]}" -v d="${RPS[direct-$dir]}" -v n="${REQS[inspect-$dir]}" -v t="${TICKS[inspect-$dir]}" -v m="$dir" \
    -v sn="${REQS[splice-$dir]}" -v st="${TICKS[splice-$dir]}" \
    'BEGIN { printf "bulk %-6s sluice inspect %.2f GB/s (direct %.2f), %.2f GB per data-plane CPU-s (splice %.2f)\n", m, s, d, n / 1e9 / (t / 100), sn / 1e9 / (st / 100) }'
done
echo "== the same path without inspecting (splice): its ceiling"
for mode in ka h2; do
  awk -v s="${RPS[inspect-$mode]}" -v p="${RPS[splice-$mode]}" -v m="$mode" \
    'BEGIN { printf "%-11s sluice inspect / splice %5.2fx\n", (m == "ka" ? "keep-alive" : "HTTP/2"), s / p }'
  echo "  per round: $(per_round "inspect-$mode" "splice-$mode")"
done
echo "== requests per CPU-second of each proxy (sluice: the data plane, control's storing not in it)"
for mode in ka new; do
  awk -v m="$mode" -v sn="${REQS[inspect-$mode]}" -v st="${TICKS[inspect-$mode]}" \
    -v qn="${REQS[squid-$mode]}" -v qt="${TICKS[squid-$mode]}" -v mn="${REQS[mitm-$mode]}" -v mt="${TICKS[mitm-$mode]}" \
    'BEGIN { s = sn / (st / 100); q = (qt > 0 ? qn / (qt / 100) : 0); t = (mt > 0 ? mn / (mt / 100) : 0);
             printf "%-9s sluice %.0f, squid %.0f (%.2fx), mitmproxy %.0f (%.1fx)\n", (m == "ka" ? "keep-alive" : "new-conn"), s, q, (q > 0 ? s / q : 0), t, (t > 0 ? s / t : 0) }'
done
awk -v sn="${REQS[inspect-h2]}" -v st="${TICKS[inspect-h2]}" -v mn="${REQS[mitm-h2]}" -v mt="${TICKS[mitm-h2]}" \
  'BEGIN { s = sn / (st / 100); t = (mt > 0 ? mn / (mt / 100) : 0); printf "HTTP/2    sluice %.0f, mitmproxy %.0f (%.1fx)\n", s, t, (t > 0 ? s / t : 0) }'
awk -v a="${P50[inspect-ka]}" -v b="${P50[direct-ka]}" \
  'BEGIN { printf "added p50 latency, sluice inspect vs direct (keep-alive, %d connections): %.2f ms\n", '"$CONNS"', a - b }'
awk -v a="${P50[inspect-1]}" -v b="${P50[direct-1]}" \
  'BEGIN { printf "added p50 latency, sluice inspect vs direct (keep-alive, 1 connection): %.3f ms\n", a - b }'
awk -v r="${RPS[inspect-new]}" 'BEGIN { printf "new intercepted connections/s (2 cores shared with wrk and the origin): %.0f\n", r }'
awk -v n="${REQS[inspect-ka]}" -v t="${TICKS[inspect-ka]}" \
  'BEGIN { printf "per core of sluice-dataplane: %.0f inspected requests/s (keep-alive)\n", n / (t / 100) }'
awk -v n="${REQS[inspect-new]}" -v t="${TICKS[inspect-new]}" \
  'BEGIN { printf "per core of sluice-dataplane: %.0f new intercepted connections/s\n", n / (t / 100) }'
