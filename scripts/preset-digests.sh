#!/usr/bin/env bash
# Prints tests/data/preset_map.txt: for the default set and for each preset
# of mappings/examples/ (loaded as an overlay on the default set), for each
# trace of tests/traces/, the number of lines and the MD5 of what
# `ami2amqp map` prints. tests/default_mappings.rs recomputes them.
#
# Traces over PREFIX bytes (decompressed) get a second line for their first
# PREFIX bytes cut after the last complete message: debug builds route only
# that much of them.
#
# Run it (from the repository) only when a change of the mappings' output
# is intended:  scripts/preset-digests.sh > tests/data/preset_map.txt
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${AMI2AMQP_BIN:-target/debug/ami2amqp}
PREFIX=2097152
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

digest() { # <mapping args…> -- <trace>
    local args=() t
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    t=$2
    "$bin" map --server pbx1 "${args[@]}" "$t" >"$tmp/out"
    echo "$(wc -l <"$tmp/out") $(md5sum <"$tmp/out" | cut -d' ' -f1)"
}

cat <<'HEADER'
# What `ami2amqp map --server pbx1 …` prints for each trace of tests/traces:
# "<set> <trace> <part> <lines> <md5 of stdout>". Set "default" is
# `--mappings mappings`, the others `--mappings mappings --mappings
# mappings/examples/<set>`. Part "prefix:N" is the first N bytes of the
# (decompressed) trace cut after its last complete message (debug builds map
# only that much of a long trace).
# tests/default_mappings.rs recomputes every line. The first version was made
# at commit 9c1a740 from the presets as full copies (`--mappings
# mappings/examples/<set>` alone), before they shrank to overlays.
# Regenerate only for an intended change of output:
#   scripts/preset-digests.sh > tests/data/preset_map.txt
HEADER
sets=(default)
for d in mappings/examples/*/; do sets+=("$(basename "$d")"); done
for s in "${sets[@]}"; do
    if [ "$s" = default ]; then m=(--mappings mappings)
    else m=(--mappings mappings --mappings "mappings/examples/$s"); fi
    for t in tests/traces/*.ami tests/traces/*.ami.zst; do
        n=$(basename "$t")
        echo "$s $n all $(digest "${m[@]}" -- "$t")"
        case "$t" in *.zst) zstd -dc "$t" >"$tmp/raw" ;; *) cp "$t" "$tmp/raw" ;; esac
        if [ "$(stat -c %s "$tmp/raw")" -gt "$PREFIX" ]; then
            head -c "$PREFIX" "$tmp/raw" |
                perl -0777 -ne 'print substr($_, 0, rindex($_, "\r\n\r\n") + 4)' >"$tmp/prefix.ami"
            echo "$s $n prefix:$PREFIX $(digest "${m[@]}" -- "$tmp/prefix.ami")"
        fi
    done
done
