#!/usr/bin/env bash
# Make sure the tools that build and check the Debian package are here:
# dpkg-deb, strip/objdump (binutils), lintian, systemd-analyze (systemd),
# adduser. As root, apt-get installs what is missing; as another user the
# script prints the command to run and fails. Idempotent; one line when all
# is there. Used by `make deb` and `make test` (tests/deb_package.rs).
set -euo pipefail

need=()
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
command -v strip >/dev/null 2>&1 || need+=(binutils)
command -v objdump >/dev/null 2>&1 || need+=(binutils)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v adduser >/dev/null 2>&1 || need+=(adduser)

if [ ${#need[@]} -eq 0 ]; then
    echo "deb-tools: dpkg-deb, binutils, lintian, systemd-analyze and adduser are installed"
    exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
    echo "deb-tools: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
log="${TMPDIR:-/tmp}/ensure-deb-tools.$$.log"
trap 'rm -f "$log"' EXIT
echo "deb-tools: installing ${need[*]} with apt-get (once)..."
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >"$log" 2>&1 </dev/null; then
    tail -n 30 "$log" >&2
    echo "deb-tools: error: apt-get install ${need[*]} failed (output above)" >&2
    exit 1
fi
echo "deb-tools: installed ${need[*]}"
