#!/usr/bin/env bash
# Make sure a RabbitMQ node answers on 127.0.0.1:$AMQP_PORT (default 5672).
#
#   scripts/ensure-rabbitmq.sh        # idempotent; one line on success
#
# - Something already answers on the port: done (exit 0).
# - rabbitmq-server is not installed: as root, install it with apt-get; as
#   another user, print the command to run and exit 1.
# - Installed but not running: start it with `rabbitmq-server -detached`
#   (there is no systemd here; the Debian package's own start through
#   invoke-rc.d may or may not have happened, e.g. a policy-rc.d that
#   forbids starting services during apt-get install), then wait at most
#   $RABBITMQ_START_TIMEOUT seconds (default 300) for the port to answer.
#   A node whose data directory holds many durable queues (left by killed
#   test or bench runs) spends minutes recovering them before it opens its
#   port: the wait is long, the open-file limit is raised before the start
#   (RabbitMQ asks for one handle per queue), and while waiting the script
#   gives up early only if the node's process is gone.
#
# Only the system node is touched: private test nodes (tests/common/broker.rs)
# run on their own ports and never go through this script.
set -euo pipefail

port="${AMQP_PORT:-5672}"
host=127.0.0.1
timeout_s="${RABBITMQ_START_TIMEOUT:-300}"
# rabbitmq-server and rabbitmqctl live in /usr/sbin, often not on a
# non-root PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf 'rabbitmq: %s\n' "$*"; }
die() { printf 'rabbitmq: error: %s\n' "$*" >&2; exit 1; }

answers() {
    # A TCP connect is enough: RabbitMQ opens its AMQP listener only at the
    # very end of its boot. `timeout` guards against a black-holed port.
    timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

if answers; then
    say "running on $host:$port"
    exit 0
fi

is_root=false
[ "$(id -u)" = 0 ] && is_root=true

# Settings of a private or test node in the caller's environment must not
# leak into the system node.
for v in $(compgen -e); do
    case "$v" in RABBITMQ_*|ERL_*) unset "$v" ;; esac
done
if [ "$port" != 5672 ]; then
    export RABBITMQ_NODE_PORT="$port"
fi

logdir="${TMPDIR:-/tmp}"
log="$logdir/ensure-rabbitmq.$$.log"
trap 'rm -f "$log"' EXIT

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if ! $is_root; then
        echo "rabbitmq: rabbitmq-server is not installed; run: sudo apt-get install -y rabbitmq-server (then re-run $0)" >&2
        exit 1
    fi
    say "installing rabbitmq-server with apt-get (once)..."
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; } >"$log" 2>&1 </dev/null; then
        tail -n 30 "$log" >&2
        die "apt-get install rabbitmq-server failed (output above)"
    fi
    command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server still not found after apt-get install"
    # The package may have started the node itself (invoke-rc.d) or not
    # (policy-rc.d, no init system): both are handled below.
fi

if ! answers; then
    if $is_root || [ "$(id -un)" = rabbitmq ]; then
        # Debian's /usr/sbin/rabbitmq-server is a wrapper that drops to the
        # rabbitmq user. If the node is already booting (started by the
        # package), this fails with "already running": fine, we just wait.
        # stdin/stdout/stderr go to a file so the detached node keeps no
        # pipe of ours (or of `make`/`tee`) open.
        # One file handle per durable queue at recovery, plus sockets: the
        # default soft limit (1024) makes a node with many queues crawl.
        # The wrapper starts the node through `su`, whose pam_limits resets
        # the caller's ulimit, so the limit goes where PAM reads it.
        # (No higher than this machine's own hard limit: PAM ignores a
        # value it cannot set.)
        if $is_root && [ -d /etc/security/limits.d ] && [ ! -e /etc/security/limits.d/rabbitmq.conf ]; then
            nofile=$(ulimit -Hn)
            { [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; } && nofile=65536
            printf '%s\n' '# written by ami2amqp scripts/ensure-rabbitmq.sh: RabbitMQ wants a file handle per queue' \
                "rabbitmq soft nofile $nofile" "rabbitmq hard nofile $nofile" >/etc/security/limits.d/rabbitmq.conf
        fi
        rabbitmq-server -detached </dev/null >"$log" 2>&1 || true
    else
        echo "rabbitmq: not running on $host:$port and only root or the rabbitmq user can start it; run: sudo rabbitmq-server -detached" >&2
        exit 1
    fi

    started=$SECONDS
    deadline=$((SECONDS + timeout_s))
    next_note=$((SECONDS + 30))
    gone() { [ $((SECONDS - started)) -ge 15 ] && ! pgrep -f 'beam.*rabbit' >/dev/null 2>&1; }
    until answers; do
        if [ "$SECONDS" -ge "$next_note" ]; then
            say "still starting after $((SECONDS - started))s (recovering queues?); waiting up to ${timeout_s}s"
            next_note=$((SECONDS + 30))
        fi
        if [ "$SECONDS" -ge "$deadline" ] || gone; then
            sleep 2
            answers && break
            {
                echo "--- rabbitmq-server -detached output:"
                cat "$log" 2>/dev/null || true
                for f in /var/log/rabbitmq/startup_err /var/log/rabbitmq/rabbit@*.log; do
                    [ -r "$f" ] || continue
                    echo "--- tail of $f:"
                    tail -n 20 "$f"
                done
            } >&2
            gone && die "the RabbitMQ node exited after $((SECONDS - started))s without answering on $host:$port (logs above)"
            die "RabbitMQ did not answer on $host:$port within ${timeout_s}s (logs above; try: rabbitmq-diagnostics status)"
        fi
        sleep 0.5
    done
fi

say "running on $host:$port"
