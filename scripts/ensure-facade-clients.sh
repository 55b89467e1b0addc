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

say() { printf 'facade-clients: %s\n' "$*"; }
die() { printf 'facade-clients: error: %s\n' "$*" >&2; exit 1; }

log="${TMPDIR:-/tmp}/ensure-facade-clients.$$.log"
trap 'rm -f "$log"' EXIT

# Runs a command with its output in $log; on failure shows the tail and dies.
quiet() {
    local what="$1"; shift
    if ! "$@" >"$log" 2>&1 </dev/null; then
        tail -n 30 "$log" >&2
        die "$what failed (output above)"
    fi
}

py_ok() { "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('panoramisk') != '$PANORAMISK_VERSION')" 2>/dev/null; }
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
if ! command -v python3 >/dev/null 2>&1; then
    need+=(python3 python3-venv)
elif ! py_ok; then
    probe="$(mktemp -d)"
    if ! python3 -m venv "$probe/v" >/dev/null 2>&1 || [ ! -x "$probe/v/bin/pip" ]; then
        need+=(python3-venv)
    fi
    rm -rf "$probe"
fi
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "facade-clients: missing ${need[*]}; run: sudo apt-get install -y ${need[*]} (then re-run $0)" >&2
        exit 1
    fi
    say "installing ${need[*]} with apt-get (once)..."
    quiet "apt-get install ${need[*]}" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${need[*]}"
    hash -r
    command -v python3 >/dev/null 2>&1 || die "python3 still not found after apt-get install"
    command -v node >/dev/null 2>&1 || die "node still not found after apt-get install"
    command -v npm >/dev/null 2>&1 || die "npm still not found after apt-get install"
fi

mkdir -p "$dest"

if ! py_ok; then
    rm -rf "$venv"
    quiet "python3 -m venv $venv" python3 -m venv "$venv"
    quiet "pip install panoramisk==$PANORAMISK_VERSION" \
        "$venv/bin/pip" install --disable-pip-version-check -q "panoramisk==$PANORAMISK_VERSION"
    py_ok || die "panoramisk $PANORAMISK_VERSION not importable from $venv after pip install"
fi

if ! node_ok; then
    mkdir -p "$nodedir"
    printf '%s\n' '{' '  "name": "ami2amqp-facade-clients",' '  "private": true,' \
        "  \"dependencies\": { \"asterisk-manager\": \"$ASTERISK_MANAGER_VERSION\" }" '}' >"$nodedir/package.json"
    quiet "npm install asterisk-manager@$ASTERISK_MANAGER_VERSION" \
        npm install --prefix "$nodedir" --no-audit --no-fund --save-exact "asterisk-manager@$ASTERISK_MANAGER_VERSION"
    node_ok || die "asterisk-manager $ASTERISK_MANAGER_VERSION not found in $nodedir after npm install"
fi

say "panoramisk $PANORAMISK_VERSION and asterisk-manager $ASTERISK_MANAGER_VERSION in $dest"
