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

NAME=snapshot-clients
# shellcheck source=lib/ensure-clients.sh
. "$root/scripts/lib/ensure-clients.sh"

if ! venv_has "$venv" pika "$PIKA_VERSION"; then
    need=()
    need_python_venv
    install_needed
    venv_install "$venv" pika "$PIKA_VERSION"
fi
say "pika $PIKA_VERSION in $venv"
