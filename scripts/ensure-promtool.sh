#!/usr/bin/env bash
# Make sure promtool (Prometheus' rule checker) is available for
# tests/contrib_monitoring.rs, which runs `promtool check rules` and
# `promtool test rules` on contrib/prometheus/.
#
#   scripts/ensure-promtool.sh        # idempotent; one line on success
#
# Where the test looks, in this order: $PROMTOOL, target/promtool/promtool
# (what this script installs), `promtool` on PATH.
#
# - One of those runs `promtool --version`: done (exit 0).
# - Otherwise promtool is taken from Debian's `prometheus` package WITHOUT
#   installing that package: `apt-get download prometheus` fetches the .deb
#   and only its usr/bin/promtool is extracted to target/promtool/promtool
#   (out of the source tree, gone with `make clean`). `apt-get install
#   prometheus` would run the package's maintainer scripts, which create a
#   `prometheus` user and start a Prometheus server on :9090 (through
#   systemd, or through /etc/init.d/prometheus where there is no systemd,
#   unless a policy-rc.d forbids it), and pull in a dozen JavaScript
#   packages for its web UI; none of that is wanted on a test machine.
#   promtool itself needs only libc.
# - When the download fails (no package lists yet), root runs
#   `apt-get update` and tries again; another user is told the command to
#   run and the script exits 1. Never skips: every failure exits non-zero.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/target/promtool"
bin="$dest/promtool"

say() { printf 'promtool: %s\n' "$*"; }
die() { printf 'promtool: error: %s\n' "$*" >&2; exit 1; }

works() { "$1" --version >/dev/null 2>&1; }

for candidate in "${PROMTOOL:-}" "$bin" "$(command -v promtool 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && works "$candidate"; then
        say "$("$candidate" --version 2>&1 | head -n 1) at $candidate"
        exit 0
    fi
done

command -v apt-get >/dev/null 2>&1 || die "not found, and no apt-get here: install promtool (Prometheus 2.x) and put it on PATH or set PROMTOOL"
command -v dpkg-deb >/dev/null 2>&1 || die "not found, and no dpkg-deb to unpack Debian's prometheus package"

work="$(mktemp -d "${TMPDIR:-/tmp}/ensure-promtool.XXXXXX")"
log="$work/log"
trap 'rm -rf "$work"' EXIT

download() { (cd "$work" && apt-get download -qq prometheus) >"$log" 2>&1 </dev/null; }

say "fetching Debian's prometheus package to extract promtool (once)..."
if ! download; then
    if [ "$(id -u)" != 0 ]; then
        tail -n 5 "$log" >&2
        die "apt-get download prometheus failed; run: sudo apt-get update (then re-run $0)"
    fi
    apt-get update -qq >"$log" 2>&1 </dev/null || { tail -n 20 "$log" >&2; die "apt-get update failed (output above)"; }
    download || { tail -n 20 "$log" >&2; die "apt-get download prometheus failed (output above)"; }
fi

deb="$(ls "$work"/prometheus_*.deb 2>/dev/null | head -n 1)"
[ -n "$deb" ] || die "apt-get download prometheus left no .deb in $work"
mkdir -p "$work/x"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" ./usr/bin/promtool \
    || die "no usr/bin/promtool in $(basename "$deb")"
mkdir -p "$dest"
install -m 755 "$work/x/usr/bin/promtool" "$bin.new"
mv -f "$bin.new" "$bin"
works "$bin" || die "$bin does not run (missing libraries?): $("$bin" --version 2>&1 | head -n 3)"
say "$("$bin" --version 2>&1 | head -n 1) at $bin (from $(basename "$deb"))"
