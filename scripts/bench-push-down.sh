#!/usr/bin/env bash
# Push-down, measured (BENCHMARKS.md, "Push-down"): the real capture
# tests/traces/calls_busy.ami.zst replayed at its recorded pace
# (calls_busy.timing.zst, 15.8 s, 179,005 events) to `ami2amqp run` with the
# default mappings plus the drop-noise preset (VarSet, Newexten, CEL publish
# nothing), RUNS times with `push_down = false` and RUNS times with
# `push_down = true`, alternating. One line per run:
#
#   mode run  server: events sent, event bytes sent, seconds, events/s, MB/s,
#             events filtered, the replay's CPU s (loading the trace included)
#             |  bridge: CPU s, messages, CPU µs per message
#
# "server" is the replay (a fake Asterisk that applies masks and Filters as
# Asterisk does) and its own count of what it wrote to the bridge's event
# connection; the bridge's CPU is utime + stime of /proc/<pid>/stat from
# just before the replay starts to the last message at the consumer
# (`ami2amqp tail`, bound with `#`), over the messages it published.
#
# Needs a release build (make build) and RabbitMQ on AMQP_URL (default the
# local guest); it uses the exchange ami.bench.push-down (no alternate
# exchange, so nothing is kept) and deletes it at the end.
#   scripts/bench-push-down.sh [RUNS]
# PACE=max: the replay sends as fast as the bridge reads instead of at the
# recorded pace (the bridge's CPU per message without idle time).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bin=${AMI2AMQP_BIN:-target/release/ami2amqp}
url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
exchange=ami.bench.push-down
trace=tests/traces/calls_busy.ami.zst
timing=tests/traces/calls_busy.timing.zst
[ -x "$bin" ] || { echo "no $bin: run make build first" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
field() { # <key> <line>: the number after key=
    sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"
}

# The mapping set: the default files with the bench exchange, and the preset.
mkdir -p "$tmp/mappings"
for f in mappings/*.toml; do
    sed "s/\"ami.events\"/\"$exchange\"/" "$f" >"$tmp/mappings/$(basename "$f")"
done
cp mappings/examples/drop-noise/05-drop-noise.toml "$tmp/mappings/"
hz=$(getconf CLK_TCK)

one_run() { # <push_down: true|false> <run>
    local mode=$1 run=$2 port dir
    port=$(free_port)
    dir="$tmp/run-$mode-$run"
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<EOF
[amqp]
url = "$url"
alternate_exchange = ""

[[server]]
name = "pbx1"
address = "127.0.0.1:$port"
username = "bridge"
secret = "bridgepass"
push_down = $mode
reconnect_initial_ms = 100
reconnect_max_ms = 200

[mappings]
dir = "$tmp/mappings"
watch = false

[spool]
dir = "$dir/spool"

[status]
exchange = "$exchange"
EOF
    RUST_LOG=info "$bin" run --config "$dir/config.toml" 2>"$dir/bridge.log" &
    local bridge=$!
    pids+=("$bridge")
    # The bridge declares the exchange when it reaches the broker.
    for _ in $(seq 100); do
        grep -q 'AMQP connected\|publisher connected\|connected to' "$dir/bridge.log" 2>/dev/null && break
        sleep 0.1
    done
    # 74,005 messages of the trace + the `connected` status message.
    local want=74006
    AMQP_URL=$url "$bin" tail --exchange "$exchange" --count "$want" '#' >"$dir/tail.out" 2>"$dir/tail.log" &
    local tail=$!
    pids+=("$tail")
    sleep 2
    local cpu0
    cpu0=$(cpu_ticks "$bridge")
    local pace=(--timing "$timing")
    [ "${PACE:-timing}" = max ] && pace=()
    RUST_LOG=info "$bin" replay --listen "127.0.0.1:$port" --username bridge --secret bridgepass \
        "${pace[@]}" "$trace" >/dev/null 2>"$dir/replay.log" &
    local replay=$!
    pids+=("$replay")
    local waited=0
    while kill -0 "$tail" 2>/dev/null; do
        sleep 0.2
        waited=$((waited + 1))
        if [ "$waited" -gt 900 ]; then
            echo "run $mode $run: the consumer got $(wc -l <"$dir/tail.out") of $want messages in 180 s" >&2
            exit 1
        fi
    done
    local cpu1 got stats rcpu
    cpu1=$(cpu_ticks "$bridge")
    rcpu=$(cpu_ticks "$replay")
    got=$(wc -l <"$dir/tail.out")
    stats=$(grep 'client stream stats' "$dir/replay.log" | grep 'stream finished' | head -1)
    kill -TERM "$bridge" "$replay" 2>/dev/null || true
    wait "$bridge" "$replay" 2>/dev/null || true
    local sent bytes secs filtered
    sent=$(field events_sent "$stats")
    bytes=$(field event_bytes_sent "$stats")
    secs=$(field seconds "$stats")
    filtered=$(field filtered "$stats")
    awk -v m="$mode" -v r="$run" -v sent="$sent" -v bytes="$bytes" -v secs="$secs" \
        -v filt="$filtered" -v c0="$cpu0" -v c1="$cpu1" -v hz="$hz" -v got="$got" -v rc="$rcpu" 'BEGIN {
        cpu = (c1 - c0) / hz
        printf "push_down=%-5s run %d  server: %6d events %9d bytes %6.2f s %7.0f ev/s %5.2f MB/s filtered %6d, %4.2f s CPU  |  bridge: %5.2f s CPU, %d messages, %5.1f us/message\n",
            m, r, sent, bytes, secs, sent / secs, bytes / secs / 1e6, filt, rc / hz, cpu, got, cpu * 1e6 / got
    }'
}

for run in $(seq "$runs"); do
    one_run false "$run"
    one_run true "$run"
done
/usr/sbin/rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"bench\">>)." >/dev/null 2>&1 \
    || echo "note: could not delete the exchange $exchange (delete it by hand)" >&2
