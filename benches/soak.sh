#!/usr/bin/env bash
# Soak (issue 20; not in CI): mixed traffic through the lab appliance for SOAK_MINUTES (30),
# with control restarted and a rule set pushed every minute. Prints, and writes to
# target/soak/: the resident size of each process over time (rss.csv), records the data
# plane emitted against those control stored (they must be equal), and every ERROR line of
# either log (there must be none).
#   benches/soak.sh                  (SOAK_MINUTES=30 by default; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_LAB=${SLUICE_LAB:-slk}
MINUTES=${SOAK_MINUTES:-30}
lab=scripts/lab
out=target/soak
mkdir -p "$out"
$lab down >/dev/null 2>&1 || true
trap 'kill $(jobs -p) 2>/dev/null || true; $lab down >/dev/null 2>&1 || true' EXIT
$lab up >/dev/null
state=$($lab env | sed -n 's/^export SLUICE_LAB_STATE=//p')
cp rules/default.toml "$state/rules.toml"
SLUICE_DATAPLANE_ARGS="--report-interval 10" $lab start --rules "$state/rules.toml" >/dev/null
eval "$($lab env)"
api() { # METHOD PATH [curl args]
  local m=$1 p=$2; shift 2
  curl -sS --fail-with-body --cacert "$SLUICE_API_CA" -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN" -X "$m" "$@" \
    "$(cat "$state/control/url")$p"
}
end=$(( $(date +%s) + MINUTES * 60 ))

# Traffic, each loop until the end: inspected API calls (one with a secret, redacted), a
# guest refused, plain web, DNS, a bulk flow every minute, and a ping.
loop() { while [ "$(date +%s)" -lt "$end" ]; do "$@" >/dev/null 2>&1 || true; done; }
loop $lab exec alice -- sh -c 'curl -sS -m 10 https://api.openai.com/v1/models -o /dev/null; sleep 0.5' &
loop $lab exec bob -- sh -c 'curl -sS -m 10 https://api.openai.com/v1/chat/completions -H "Content-Type: application/json" \
  --data-binary "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"key AKIAJ7QXRZ3EXAMPLEQ2\"}]}" -o /dev/null; sleep 1' &
loop $lab exec guest -- sh -c 'curl -sS -m 5 https://api.openai.com/v1/models -o /dev/null; curl -sS -m 5 http://example.org/ -o /dev/null; sleep 2' &
loop $lab exec alice -- sh -c 'getent ahosts chatgpt.com; sleep 3' &
loop $lab exec bob -- sh -c 'iperf3 -c 198.51.100.80 -t 5; sleep 55' &
$lab exec alice -- ping -q -i 0.2 -w $(( MINUTES * 60 )) 198.51.100.80 >/dev/null 2>&1 &

# Every minute: control restarted, a rule set pushed (two versions in turn).
restarts=0
pushes=0
chaos() {
  local i=0
  while [ "$(date +%s)" -lt $(( end - 30 )) ]; do
    sleep 60
    i=$((i + 1))
    kill "$(cat "$state/control.pid")"
    sleep 2
    setsid bash -c 'echo $$ > "$0"; exec "$1" --config "$2"' "$state/control.pid" "$PWD/target/release/sluice-control" \
      "$state/control/control.toml" >> "$state/control.log" 2>&1 < /dev/null &
    sleep 3
    if [ $((i % 2)) -eq 1 ]; then
      sed 's/max_inspect_bytes = 8388608/max_inspect_bytes = 4194304/' rules/default.toml > "$state/push.toml"
    else
      cp rules/default.toml "$state/push.toml"
    fi
    api PUT /v1/rules --data-binary "@$state/push.toml" >/dev/null || echo "push $i refused" >&2
    echo "minute $i: control restarted, rules pushed"
  done
}
chaos &

# Resident sizes every 10 s.
echo "t_s,dataplane_kib,control_kib" > "$out/rss.csv"
start=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
  dp=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$state/dataplane.pid")/status" 2>/dev/null || echo 0)
  ct=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$state/control.pid")/status" 2>/dev/null || echo 0)
  echo "$(( $(date +%s) - start )),${dp:-0},${ct:-0}" >> "$out/rss.csv"
  sleep 10
done
wait $(jobs -p) 2>/dev/null || true

# Every flow ends, the data plane stops (its shutdown records) and starts again to send what
# its spool still holds; then what it wrote and what control stored must agree.
sleep 15
kill "$(cat "$state/dataplane.pid")"
for _ in $(seq 100); do kill -0 "$(cat "$state/dataplane.pid")" 2>/dev/null || break; sleep 0.2; done
SLUICE_DATAPLANE_ARGS="--report-interval 10" $lab start --rules "$state/rules.toml" >/dev/null
count() {
  python3 -c '
import json, sys
n = {"flow": 0, "request": 0}
for line in open(sys.argv[1]):
    t = json.loads(line).get("type")
    if t in n: n[t] += 1
print(n["flow"], n["request"])' "$SLUICE_FLOW_LOG"
}
for _ in $(seq 60); do
  emitted=$(count)
  stored=$(api GET /v1/status | python3 -c 'import json,sys; s=json.load(sys.stdin)["stored"]; print(s["flows"], s["requests"])')
  [ "$emitted" = "$stored" ] && break
  sleep 1
done
errors=$(grep -h " ERROR " "$state/dataplane.log" "$state/control.log" || true)
echo "$errors" > "$out/errors.log"
python3 - "$out/rss.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for k in ("dataplane_kib", "control_kib"):
    v = [int(r[k] or 0) for r in rows]
    v = [x for x in v if x > 0]
    q = len(v) // 4
    print("%-10s RSS MiB: first quarter %.0f, last quarter %.0f, max %.0f" % (k.split("_")[0],
          sum(v[:q]) / q / 1024, sum(v[-q:]) / q / 1024, max(v) / 1024))
EOF
echo "records the data plane wrote (flow, request): $emitted"
echo "records control stored (flow, request):       $stored"
echo "ERROR lines in the logs: $(printf '%s' "$errors" | grep -c . || true)"
[ "$stored" = "$emitted" ] || { echo "soak: records lost or duplicated" >&2; exit 1; }
[ -z "$errors" ] || { echo "soak: errors logged (target/soak/errors.log)" >&2; exit 1; }
echo "soak: ok ($MINUTES minutes)"
