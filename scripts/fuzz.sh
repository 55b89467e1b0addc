#!/usr/bin/env bash
# Fuzzes the parsers of hostile bytes, one cargo-fuzz target each:
#   decode      AMI bytes through the decoder (fuzz/fuzz_targets/decode.rs)
#   spool_scan  a damaged spool segment through recovery (fuzz/fuzz_targets/spool_scan.rs)
#   filter      Filter actions (criteria, pattern) and events through the event filters (fuzz/fuzz_targets/filter.rs)
#
#   scripts/fuzz.sh                         # every target, 60 s each, with AddressSanitizer
#   FUZZ_TARGETS=decode scripts/fuzz.sh     # one target
#   FUZZ_SECONDS=600 scripts/fuzz.sh        # longer
#   FUZZ_SANITIZER=none scripts/fuzz.sh     # without ASan (faster, or where ASan fails)
#   scripts/fuzz.sh -jobs=2 -workers=2      # extra arguments go to libFuzzer
#
# A stable toolchain is enough: RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# cargo-fuzz passes to rustc. cargo-fuzz itself is installed from crates.io
# when missing. Corpora live in fuzz/corpus/<target> (the decoder's seeded
# here from small traces of tests/traces), crashes land in
# fuzz/artifacts/<target>; both, and fuzz/target, are gitignored. Exits
# non-zero when the fuzzer finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets="${FUZZ_TARGETS:-decode spool_scan filter}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

traces="$root/tests/traces"

# Seed corpus of the decoder: real traffic. The first byte of an input is
# the read size minus one (see the target), the rest is the stream.
seed_decode() {
    local corpus=$1
    seed() { # NAME READ_SIZE_BYTE_HEX FILE [MAX_BYTES]
        { printf "\\x$2"; head -c "${4:-4000}" "$3"; } > "$corpus/seed-$1"
    }
    seed login_plain 00 "$traces/login_plain.ami"
    seed login_md5 07 "$traces/login_md5.ami"
    seed login_fail ff "$traces/login_fail.ami"
    seed prelogin 3f "$traces/prelogin.ami"
    seed events_filtered 1f "$traces/events_filtered.ami"
    seed calls_small 80 "$traces/calls_small.ami"
    seed actions_sent 0f "$traces/actions.sent"
    seed permission_denied_sent 02 "$traces/permission_denied.sent"
}

for target in $targets; do
    corpus="$root/fuzz/corpus/$target"
    mkdir -p "$corpus"
    extra=()
    if [ "$target" = decode ]; then
        seed_decode "$corpus"
        extra=(-dict="$root/fuzz/ami.dict")
    fi
    echo "fuzz.sh: $target for ${seconds}s, sanitizer=$sanitizer, corpus $corpus" >&2
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" \
        -max_len=4096 \
        -print_final_stats=1 \
        "${extra[@]}" \
        "$@"
done
