#!/usr/bin/env bash
# Interception benchmark, all in one run on the lab: HTTPS POSTs of a 2 KB JSON prompt from
# alice (wrk, keep-alive and one connection per request) to a fast HTTPS origin
# (dataplane/examples/bench_upstream.rs) through
#   - sluice inspecting (divert, minted leaf, strict upstream TLS, HTTP/1.1 checks),
#   - sluice splicing (diverted, decided allow, bytes relayed),
#   - sluice inspecting with --fast-path off (the divert NAT done by the engine, not the kernel),
#   - a plain Linux bridge (direct: the reference for added latency),
#   - mitmproxy (mitmdump, reverse mode, same enterprise CA, upstream verified),
#   - Squid (squid-openssl, TLS-terminating accelerator with an enterprise-CA certificate,
#     re-encrypting to the origin, cache off).
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
command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
command -v squid >/dev/null || apt-get install -y -q squid-openssl >/dev/null
BENCH_VENV=${SLUICE_LAB_CACHE:-/var/cache/sluice-lab}/bench-venv
if [ ! -x "$BENCH_VENV/bin/mitmdump" ]; then
  python3 -m venv "$BENCH_VENV" && "$BENCH_VENV/bin/pip" install -q mitmproxy
fi
$lab down >/dev/null 2>&1 || true
trap '$lab down >/dev/null 2>&1 || true' EXIT
$lab up >/dev/null
cargo build --release --locked -q -p sluice-dataplane -p sluice-control --example bench_upstream
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
issue squid.bench.lab "$PKI/enterprise-ca" "$W/squid"
for oct in 90 91 92; do wan ip addr add "198.51.100.$oct/32" dev lo; done
printf '198.51.100.90 bench.lab\n198.51.100.91 mitm.bench.lab\n198.51.100.92 squid.bench.lab\n' >> "$STATE/hosts"
kill -HUP "$(cat "$STATE/dnsmasq.pid")"
wan target/release/examples/bench_upstream 198.51.100.90:443 "$W/origin.crt" "$W/origin.key" > "$W/origin.log" 2>&1 &
ORIGIN=$!
mkdir -p "$W/mitm"
cat "$PKI/enterprise-ca.key" "$PKI/enterprise-ca.crt" > "$W/mitm/mitmproxy-ca.pem"
wan "$BENCH_VENV/bin/mitmdump" -q --listen-host 198.51.100.91 --listen-port 443 --mode reverse:https://bench.lab:443 \
  --set confdir="$W/mitm" --set ssl_verify_upstream_trusted_ca="$PKI/lab-root.crt" > "$W/mitm.log" 2>&1 &
MITM=$!
cat > "$W/squid.conf" <<CONF
http_port 127.0.0.1:3199
https_port 198.51.100.92:443 accel tls-cert=$W/squid.crt tls-key=$W/squid.key defaultsite=bench.lab
cache_peer 198.51.100.90 parent 443 0 no-query originserver tls tls-cafile=$PKI/lab-root.crt tls-domain=bench.lab name=origin
cache_peer_access origin allow all
http_access allow all
cache deny all
pid_filename $W/squid.pid
access_log none
cache_log $W/squid-cache.log
coredump_dir $W
CONF
wan squid -N -f "$W/squid.conf" > "$W/squid.log" 2>&1 &
SQUID=$!
cleanup_refs() { kill "$ORIGIN" "$MITM" "$SQUID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'cleanup_refs; $lab down >/dev/null 2>&1 || true' EXIT
sleep 3

# --- the request: POST of a 2 KB chat prompt
python3 - "$W/post.lua" <<'PY'
import json, sys
prompt = ("Summarise the quarterly figures for the board. " * 60)[:1900]
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
with open(sys.argv[1], "w") as f:
    f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    f.write('wrk.headers["Authorization"] = "Bearer sk-bench-0000"\n')
    f.write("wrk.body = %s\n" % json.dumps(body))
    f.write('if os.getenv("WRK_CLOSE") == "1" then wrk.headers["Connection"] = "close" end\n')
PY

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'; }

declare -A RPS P50 P99 REQS TICKS LABEL SAMPLES
# CPU time (ticks of 1/100 s) the data plane has used so far (0 when it is not running).
cpu_ticks() {
  local pid
  pid=$(cat "$STATE/dataplane.pid" 2>/dev/null) && [ -r "/proc/$pid/stat" ] \
    && awk '{print $14 + $15}' "/proc/$pid/stat" || echo 0
}
ORDER=()
sample() { # key label host url close [connections]: one SECS-long wrk run, kept for report
  local out t0 conns=${6:-$CONNS}
  if [ -n "$ONLY" ] && ! grep -qE "^($ONLY)\$" <<<"$1"; then return; fi
  [ -n "${LABEL[$1]:-}" ] || ORDER+=("$1")
  LABEL[$1]=$2
  t0=$(cpu_ticks)
  out=$($lab exec "$3" -- env WRK_CLOSE="$5" wrk -t"$((conns < 2 ? 1 : 2))" -c"$conns" -d"${SECS}s" --latency -s "$W/post.lua" "$4" 2>&1)
  if ! grep -q "Requests/sec" <<<"$out"; then echo "$out" >&2; echo "wrk failed for $2" >&2; exit 1; fi
  if grep -q "Non-2xx" <<<"$out"; then
    echo "$out" >&2; echo "non-2xx responses for $2; refusals recorded:" >&2
    grep '"type":"request"' "$STATE/flows.jsonl" | grep -v '"status":200' | tail -3 >&2 || true
    tail -5 "$STATE/dataplane.log" >&2
    exit 1
  fi
  # Requests per CPU-second of sluice-dataplane (its threads and the kernel work done in their
  # system calls; softirq work on other threads is not in it), for the sluice rows.
  TICKS[$1]=$(( ${TICKS[$1]:-0} + $(cpu_ticks) - t0 ))
  REQS[$1]=$(( ${REQS[$1]:-0} + $(awk '/requests in/ {print $1}' <<<"$out") ))
  RPS[$1]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
  P50[$1]+="$(awk '$1 == "50%" {print $2}' <<<"$out" | to_ms) "
  P99[$1]+="$(awk '$1 == "99%" {print $2}' <<<"$out" | to_ms) "
}
med() { tr ' ' '\n' <<<"$1" | grep . | median; }
# The ports bridged in place of the appliance (direct path, reference proxies) or not.
bridge() {
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
echo "== $RUNS rounds x ${SECS}s per row, $CONNS connections, 2 KB JSON POSTs (rows take turns round by round)"
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
  $lab stop >/dev/null
  # The same without the kernel fast path: every diverted packet NAT-ed by the engine.
  SLUICE_DATAPLANE_ARGS="--fast-path off" $lab start --rules "$W/rules.toml" >/dev/null
  sample inspect-ka-off "sluice inspect, no fast path (k-a)" alice $URL 0
  sample inspect-new-off "sluice inspect, no fast path (new)" alice $URL 1
  $lab stop >/dev/null
  bridge
  sample direct-ka "direct, Linux bridge (keep-alive)" alice $URL 0
  sample direct-new "direct, Linux bridge (new conn/request)" alice $URL 1
  sample direct-1 "direct, Linux bridge (1 conn, k-a)" alice $URL 0 1
  sample mitm-ka "mitmproxy (keep-alive)" alice https://mitm.bench.lab/v1/chat/completions 0
  sample mitm-new "mitmproxy (new conn/request)" alice https://mitm.bench.lab/v1/chat/completions 1
  sample squid-ka "squid (keep-alive)" alice https://squid.bench.lab/v1/chat/completions 0
  sample squid-new "squid (new conn/request)" alice https://squid.bench.lab/v1/chat/completions 1
  unbridge
  echo "   round $round of $RUNS done" >&2
done
for k in "${ORDER[@]}"; do
  PER=""
  if [ "${TICKS[$k]}" -gt 0 ]; then
    PER=$(awk -v n="${REQS[$k]}" -v t="${TICKS[$k]}" 'BEGIN { printf "   %.0f per data-plane CPU-s", n / (t / 100) }')
  fi
  printf '%-40s %9.0f req/s (%s)  p50 %6.2f ms   p99 %6.2f ms%s\n' "${LABEL[$k]}" "$(med "${RPS[$k]}")" \
    "$(tr ' ' '/' <<<"${RPS[$k]% }")" "$(med "${P50[$k]}")" "$(med "${P99[$k]}")" "$PER"
  SAMPLES[$k]=${RPS[$k]}
  RPS[$k]=$(med "${RPS[$k]}")
  P50[$k]=$(med "${P50[$k]}")
done
# a over b in each round: "12.3x / 11.0x / ..."
per_round() {
  paste -d' ' <(tr ' ' '\n' <<<"${SAMPLES[$1]}" | grep .) <(tr ' ' '\n' <<<"${SAMPLES[$2]}" | grep .) |
    awk '{ printf "%s%.2fx", (NR > 1 ? " / " : ""), $1 / $2 }'
}
if [ -n "$ONLY" ]; then exit 0; fi
echo "== ratios (requests/s)"
for mode in ka new; do
  awk -v m="$mode" -v s="${RPS[inspect-$mode]}" -v mi="${RPS[mitm-$mode]}" -v sq="${RPS[squid-$mode]}" \
    'BEGIN { printf "%-9s sluice inspect / mitmproxy %6.1fx   / squid %5.2fx\n", (m == "ka" ? "keep-alive" : "new-conn"), s / mi, s / sq }'
  echo "  per round: mitmproxy $(per_round "inspect-$mode" "mitm-$mode"); squid $(per_round "inspect-$mode" "squid-$mode")"
done
awk -v a="${P50[inspect-ka]}" -v b="${P50[direct-ka]}" \
  'BEGIN { printf "added p50 latency, sluice inspect vs direct (keep-alive, %d connections): %.2f ms\n", '"$CONNS"', a - b }'
awk -v a="${P50[inspect-1]}" -v b="${P50[direct-1]}" \
  'BEGIN { printf "added p50 latency, sluice inspect vs direct (keep-alive, 1 connection): %.3f ms\n", a - b }'
awk -v r="${RPS[inspect-new]}" 'BEGIN { printf "new intercepted connections/s (2 cores shared with wrk and the origin): %.0f\n", r }'
awk -v n="${REQS[inspect-ka]}" -v t="${TICKS[inspect-ka]}" \
  'BEGIN { printf "per core of sluice-dataplane: %.0f inspected requests/s (keep-alive)\n", n / (t / 100) }'
awk -v n="${REQS[inspect-new]}" -v t="${TICKS[inspect-new]}" \
  'BEGIN { printf "per core of sluice-dataplane: %.0f new intercepted connections/s\n", n / (t / 100) }'
