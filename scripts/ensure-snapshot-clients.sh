#!/usr/bin/env bash
# Install the AMQP client library the snapshot consumer of tests/snapshot.rs
# runs (tests/snapshot_consumer.py), under target/ (out of the source tree,
# gone with `make clean`):
#
#   target/snapshot-clients/venv/        Python venv with pika==$PIKA_VERSION
#
#   scripts/ensure-snapshot-clients.sh   # idempotent; one line on success
#
# - Already installed at the pinned version: done (exit 0).
# - python3 with venv missing: as root, install it with apt-get
#   (python3-venv); as another user, print the command to run and exit 1.
#   Never skips: every failure exits non-zero.
# - pika comes from PyPI (pip, pinned version).
set -euo pipefail

PIKA_VERSION=1.3.2

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${SNAPSHOT_CLIENTS_DIR:-$root/target/snapshot-clients}"
venv="$dest/venv"

say() { printf 'snapshot-clients: %s\n' "$*"; }
die() { printf 'snapshot-clients: error: %s\n' "$*" >&2; exit 1; }

log="${TMPDIR:-/tmp}/ensure-snapshot-clients.$$.log"
trap 'rm -f "$log"' EXIT

quiet() {
    local what="$1"; shift
    if ! "$@" >"$log" 2>&1 </dev/null; then
        tail -n 30 "$log" >&2
        die "$what failed (output above)"
    fi
}

py_ok() { "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pika') != '$PIKA_VERSION')" 2>/dev/null; }

if py_ok; then
    say "pika $PIKA_VERSION in $venv"
    exit 0
fi

need=()
if ! command -v python3 >/dev/null 2>&1; then
    need+=(python3 python3-venv)
else
    probe="$(mktemp -d)"
    if ! python3 -m venv "$probe/v" >/dev/null 2>&1 || [ ! -x "$probe/v/bin/pip" ]; then
        need+=(python3-venv)
    fi
    rm -rf "$probe"
fi

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "snapshot-clients: missing ${need[*]}; run: sudo apt-get install -y ${need[*]} (then re-run $0)" >&2
        exit 1
    fi
    say "installing ${need[*]} with apt-get (once)..."
    quiet "apt-get install ${need[*]}" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${need[*]}"
    hash -r
    command -v python3 >/dev/null 2>&1 || die "python3 still not found after apt-get install"
fi

mkdir -p "$dest"
rm -rf "$venv"
quiet "python3 -m venv $venv" python3 -m venv "$venv"
quiet "pip install pika==$PIKA_VERSION" \
    "$venv/bin/pip" install --disable-pip-version-check -q "pika==$PIKA_VERSION"
py_ok || die "pika $PIKA_VERSION not importable from $venv after pip install"

say "pika $PIKA_VERSION in $venv"
