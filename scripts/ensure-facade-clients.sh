#!/usr/bin/env bash
# Install the AMI client libraries that tests/facade_clients.rs drives,
# under target/facade-clients/ (out of the source tree, gone with `make clean`):
#
#   target/facade-clients/venv/          Python venv with panoramisk==$PANORAMISK_VERSION
#   target/facade-clients/node/          npm project with asterisk-manager@$ASTERISK_MANAGER_VERSION
#
#   scripts/ensure-facade-clients.sh     # idempotent; one line on success
#
# - Both already installed at the pinned versions: done (exit 0).
# - python3 with venv, node or npm missing: as root, install them with
#   apt-get (python3-venv, nodejs, npm); as another user, print the command
#   to run and exit 1. Never skips: every failure exits non-zero.
# - The libraries come from PyPI and the npm registry (pip and npm, pinned
#   versions).
set -euo pipefail

PANORAMISK_VERSION=1.4
ASTERISK_MANAGER_VERSION=0.2.0

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${FACADE_CLIENTS_DIR:-$root/target/facade-clients}"
venv="$dest/venv"
nodedir="$dest/node"

NAME=facade-clients
# shellcheck source=lib/ensure-clients.sh
. "$root/scripts/lib/ensure-clients.sh"

py_ok() { venv_has "$venv" panoramisk "$PANORAMISK_VERSION"; }
node_ok() {
    command -v node >/dev/null 2>&1 || return 1
    node -e "process.exit(require('$nodedir/node_modules/asterisk-manager/package.json').version === '$ASTERISK_MANAGER_VERSION' ? 0 : 1)" 2>/dev/null
}

if py_ok && node_ok; then
    say "panoramisk $PANORAMISK_VERSION and asterisk-manager $ASTERISK_MANAGER_VERSION in $dest"
    exit 0
fi

# System packages: a python3 that can make a venv (with pip), node, npm.
need=()
py_ok || need_python_venv
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
install_needed
command -v node >/dev/null 2>&1 || die "node still not found after apt-get install"
command -v npm >/dev/null 2>&1 || die "npm still not found after apt-get install"

mkdir -p "$dest"

py_ok || venv_install "$venv" panoramisk "$PANORAMISK_VERSION"

if ! node_ok; then
    mkdir -p "$nodedir"
    printf '%s\n' '{' '  "name": "ami2amqp-facade-clients",' '  "private": true,' \
        "  \"dependencies\": { \"asterisk-manager\": \"$ASTERISK_MANAGER_VERSION\" }" '}' >"$nodedir/package.json"
    quiet "npm install asterisk-manager@$ASTERISK_MANAGER_VERSION" \
        npm install --prefix "$nodedir" --no-audit --no-fund --save-exact "asterisk-manager@$ASTERISK_MANAGER_VERSION"
    node_ok || die "asterisk-manager $ASTERISK_MANAGER_VERSION not found in $nodedir after npm install"
fi

say "panoramisk $PANORAMISK_VERSION and asterisk-manager $ASTERISK_MANAGER_VERSION in $dest"
