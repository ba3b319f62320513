#!/usr/bin/env bash
# Samples where sotto-server spends its CPU under sotto-bench's relay workload, once per live
# protocol version (sotto-json: version 1, JSON frames of one message; sotto: version 2, binary
# pages), and prints each profile's top entries by self time. perf samples the software
# cpu-clock event across the machine (this kind of machine has no hardware counters) and the
# report keeps the server process only.
#   scripts/profile-relay.sh [WINDOW] [SECONDS]   (defaults: 16, 8)
set -euo pipefail
WINDOW=${1:-16}
SECONDS_PER_RUN=${2:-8}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
command -v perf > /dev/null || { echo "perf not found (Debian: linux-perf)" >&2; exit 1; }
# Line tables only: symbols and inlined frames in the report, the optimised code unchanged.
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p sotto --bin sotto-server -p sotto-bench
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for system in sotto-json sotto; do
    perf record -q -e cpu-clock -F 1999 -a -g -o "$W/$system.data" -- \
        "$ROOT/target/release/sotto-bench" --systems "$system" --windows "$WINDOW" \
        --seconds "$SECONDS_PER_RUN" --warmup 1 --backlog 0 --e2ee-groups 0 --crypto-seconds 0 \
        --idle 0 --kt 0 --daemon-sends 0 --out "$W/$system" > "$W/$system.out" 2>&1
    echo "== $system (window $WINDOW): $(grep -m1 -o '[0-9]* msgs/s.*' "$W/$system.out" || true)"
    # The server's threads are named by its runtime, like the load generator's: find the
    # process by its main thread's name.
    pid=$(perf script -i "$W/$system.data" -F pid,comm 2> /dev/null | awk '$2 == "sotto-server" { print $1; exit }')
    perf report -i "$W/$system.data" --pid "$pid" --no-children --sort symbol \
        --stdio -g none --percent-limit 0.7 2> /dev/null | grep -v '^#' | grep -v '^$' | head -40
done
