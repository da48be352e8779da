#!/usr/bin/env bash
# Packet-path benchmark: the same lab topology forwarded by sluice-dataplane (every frame through
# the engine with socket I/O, then with the receive ring; then the default, where flows the
# engine allowed take the kernel fast path), then by a plain Linux bridge in the appliance
# namespace (same veths, same offload settings; the fast path and the bridge take turns).
# Prints medians of RUNS runs and the ratios.
# Needs root.
#   benches/packet.sh            (RUNS=5 SECS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_LAB=${SLUICE_LAB:-slb}
RUNS=${RUNS:-5}
SECS=${SECS:-5}
lab=scripts/lab
$lab down >/dev/null 2>&1 || true
trap '$lab down >/dev/null 2>&1 || true' EXIT
$lab up >/dev/null
cargo build --release --locked -q -p sluice-dataplane

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

tcp_once() {
  $lab exec alice -- iperf3 -c 198.51.100.80 -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'
}
pps_once() {
  $lab exec alice -- iperf3 -c 198.51.100.80 -u -l 18 -b 0 -t "$SECS" -J | python3 -c '
import json,sys
e=json.load(sys.stdin)["end"]["sum"]
print((e["packets"]-e["lost_packets"])/e["seconds"])'
}
report() { # label "tcp samples" "pps samples"
  TCP=$(printf '%s\n' $2 | median)
  PPS=$(printf '%s\n' $3 | median)
  awk -v l="$1" -v t="$TCP" -v p="$PPS" -v r="$RUNS" -v s="$SECS" \
    'BEGIN { printf "%-22s TCP %8.2f Gbit/s   64-byte frames %8.0f kpps   (medians of %d x %ss)\n", l, t / 1e9, p / 1e3, r, s }'
}
measure() { # label
  local tcp="" pps="" i
  for i in $(seq "$RUNS"); do tcp+=" $(tcp_once)"; pps+=" $(pps_once)"; done
  report "$1" "$tcp" "$pps"
}
bridge() { # up|down
  if [ "$1" = up ]; then
    ip netns exec "$SLUICE_LAB-appl" ip link add br0 type bridge
    ip netns exec "$SLUICE_LAB-appl" ip link set inside master br0
    ip netns exec "$SLUICE_LAB-appl" ip link set outside master br0
    ip netns exec "$SLUICE_LAB-appl" ip link set br0 up
  else
    ip netns exec "$SLUICE_LAB-appl" ip link del br0
  fi
}

SLUICE_DATAPLANE_ARGS="--io socket --fast-path off" $lab start >/dev/null
measure "sluice (socket I/O)"
$lab stop >/dev/null
SLUICE_DATAPLANE_ARGS="--io ring --fast-path off" $lab start >/dev/null
measure "sluice (ring I/O)"
R_TCP=$TCP; R_PPS=$PPS
$lab stop >/dev/null
# The fast path and the bridge take turns, so that drift on this shared machine hits both.
f_tcp="" f_pps="" b_tcp="" b_pps=""
for i in $(seq "$RUNS"); do
  SLUICE_DATAPLANE_ARGS="--io ring --fast-path kernel" $lab start >/dev/null
  f_tcp+=" $(tcp_once)"; f_pps+=" $(pps_once)"
  $lab stop >/dev/null
  bridge up
  b_tcp+=" $(tcp_once)"; b_pps+=" $(pps_once)"
  bridge down
done
report "sluice (fast path)" "$f_tcp" "$f_pps"
S_TCP=$TCP; S_PPS=$PPS
report "linux bridge" "$b_tcp" "$b_pps"
awk -v a="$R_TCP" -v b="$TCP" -v c="$R_PPS" -v d="$PPS" \
  'BEGIN { printf "ratio sluice (ring)/bridge:       TCP %.2fx   small frames %.2fx\n", a / b, c / d }'
awk -v a="$S_TCP" -v b="$TCP" -v c="$S_PPS" -v d="$PPS" \
  'BEGIN { printf "ratio sluice (fast path)/bridge:  TCP %.2fx   small frames %.2fx\n", a / b, c / d }'
