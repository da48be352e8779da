#!/usr/bin/env bash
# The packages as a network team installs them: scripts/package builds the three .debs, which
# go into a clean Debian root (debootstrap minbase with systemd, cached), and are checked there:
# files, modes and conffiles; the state directories postinst makes; no unit enabled or
# started, and postinst saying what comes next; the units verified by systemd-analyze (no
# warning) and their exposure within bounds; the binaries run from the root; the default
# control configuration refused (no admin token); removal keeps configuration and state,
# purge leaves nothing behind.
# Needs root (chroot). Run by scripts/test.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${SLUICE_LAB_CACHE:-/var/cache/sluice-lab}
SUITE=bookworm
base=$CACHE/debian-$SUITE-systemd
fail() { echo "package test: $*" >&2; exit 1; }

if [ ! -x "$base/usr/bin/dpkg" ] || [ ! -e "$base/usr/lib/systemd/system/sysinit.target" ]; then
  echo "== a clean Debian $SUITE root (debootstrap, cached in $base)"
  rm -rf "$base.tmp"
  debootstrap --variant=minbase --include=systemd,procps "$SUITE" "$base.tmp" http://deb.debian.org/debian >/dev/null
  rm -rf "$base"; mv "$base.tmp" "$base"
fi
work=$(mktemp -d /var/tmp/sluice-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
cp -a "$base" "$root"

echo "== scripts/package"
scripts/package "$work/debs" > "$work/package.log" 2>&1 || { tail -20 "$work/package.log" >&2; fail "scripts/package failed"; }
for p in sluice-dataplane sluice-control sluicectl; do
  ls "$work/debs/${p}_"*.deb >/dev/null 2>&1 || fail "no $p package"
done
cp "$work"/debs/*.deb "$root/tmp/"

echo "== dpkg -i into the clean root"
chroot "$root" sh -c 'dpkg -i /tmp/sluicectl_*.deb /tmp/sluice-dataplane_*.deb /tmp/sluice-control_*.deb' > "$work/install.log" 2>&1 \
  || { cat "$work/install.log" >&2; fail "dpkg -i failed"; }
for p in sluice-dataplane sluice-control; do
  grep -q "$p is installed, not started. Next:" "$work/install.log" || fail "$p's postinst said no next steps"
done

echo "== files, modes, conffiles"
check_mode() { # path mode
  [ -e "$root$1" ] || fail "$1 is missing"
  local m; m=$(stat -c '%a %U:%G' "$root$1")
  [ "$m" = "$2 root:root" ] || fail "$1 is $m, expected $2 root:root"
}
check_mode /usr/bin/sluice-dataplane 755
check_mode /usr/bin/sluice-control 755
check_mode /usr/bin/sluicectl 755
check_mode /etc/sluice/dataplane.env 640
check_mode /etc/sluice/control.toml 640
check_mode /etc/sluice/rules.toml 644
check_mode /var/lib/sluice 700
check_mode /var/lib/sluice-control 700
check_mode /var/log/sluice 750
check_mode /usr/lib/systemd/system/sluice-dataplane.service 644
check_mode /usr/lib/systemd/system/sluice-control.service 644
check_mode /usr/share/doc/sluice-dataplane/examples/networkd/30-sluice0.netdev 644
cmp -s rules/default.toml "$root/etc/sluice/rules.toml" || fail "/etc/sluice/rules.toml is not rules/default.toml"
for p in sluice-dataplane sluice-control; do
  chroot "$root" dpkg-query -W -f='${Conffiles}\n' "$p" | grep -q "/etc/sluice/" || fail "$p has no conffiles in /etc/sluice"
done
# Nothing enabled, nothing started: a half-configured appliance never runs.
if ls "$root"/etc/systemd/system/*.wants/sluice-* >/dev/null 2>&1; then fail "a unit was enabled at install"; fi

echo "== systemd-analyze verify and security"
out=$(systemd-analyze verify --root="$root" sluice-dataplane.service sluice-control.service 2>&1) \
  || fail "systemd-analyze verify failed: $out"
[ -z "$out" ] || fail "systemd-analyze verify warned: $out"
for u in sluice-dataplane sluice-control; do
  grep -qx "Type=notify" "$root/usr/lib/systemd/system/$u.service" || fail "$u is not Type=notify"
  grep -q "^WatchdogSec=" "$root/usr/lib/systemd/system/$u.service" || fail "$u has no watchdog"
  # The overall exposure (0-10, as tenths here) within "OK".
  systemd-analyze security --offline=yes --root="$root" --threshold=50 "$u.service" > "$work/security-$u.txt" 2>&1 \
    || { tail -3 "$work/security-$u.txt" >&2; fail "$u.service is exposed beyond 5.0"; }
  echo "   $(grep -o 'Overall exposure level for .*' "$work/security-$u.txt")"
done
grep -qx "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN CAP_BPF" "$root/usr/lib/systemd/system/sluice-dataplane.service" \
  || fail "the data plane's capabilities are not exactly CAP_NET_RAW CAP_NET_ADMIN CAP_BPF"

echo "== the binaries run from the root"
v=$(chroot "$root" sluicectl --version) || fail "sluicectl --version failed"
[ "$v" = "sluicectl $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] || fail "sluicectl --version said: $v"
chroot "$root" sluice-dataplane --version >/dev/null || fail "sluice-dataplane --version failed"
chroot "$root" sluice-control --version >/dev/null || fail "sluice-control --version failed"
# The shipped configuration is refused until an admin token is set: enabling the unit early
# starts nothing half-configured.
if chroot "$root" env -u RUST_BACKTRACE sluice-control --config /etc/sluice/control.toml > "$work/control.out" 2>&1; then
  fail "sluice-control started with the shipped configuration"
fi
grep -q "no admin token" "$work/control.out" || fail "sluice-control's refusal: $(cat "$work/control.out")"
chroot "$root" sluicectl rules check /etc/sluice/rules.toml > /dev/null || fail "the shipped rules do not check"

echo "== removal and purge"
# Some state, as a running appliance leaves it.
touch "$root/var/lib/sluice/learned.json" "$root/var/lib/sluice-control/flows.db" "$root/var/log/sluice/flows.jsonl"
chroot "$root" dpkg -r sluice-dataplane sluice-control sluicectl > /dev/null
for f in /usr/bin/sluice-dataplane /usr/bin/sluice-control /usr/bin/sluicectl \
         /usr/lib/systemd/system/sluice-dataplane.service /usr/lib/systemd/system/sluice-control.service; do
  [ ! -e "$root$f" ] || fail "$f stayed after removal"
done
for f in /etc/sluice/control.toml /etc/sluice/dataplane.env /var/lib/sluice/learned.json \
         /var/lib/sluice-control/flows.db /var/log/sluice/flows.jsonl; do
  [ -e "$root$f" ] || fail "removal took $f (only purge may)"
done
chroot "$root" dpkg --purge sluice-dataplane sluice-control > /dev/null
for f in /etc/sluice /var/lib/sluice /var/lib/sluice-control /var/log/sluice; do
  [ ! -e "$root$f" ] || fail "purge left $f"
done
for p in sluice-dataplane sluice-control sluicectl; do
  if chroot "$root" dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
    fail "$p is still installed"
  fi
done
echo "ok: packages install, verify and purge cleanly"
