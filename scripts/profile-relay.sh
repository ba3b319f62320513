#!/usr/bin/env bash
# Samples where sotto-server spends its CPU under sotto-bench's relay workload, once per live
# protocol version (sotto-json: version 1, JSON frames of one message; sotto: version 2, binary
# pages), and prints each profile's top entries by self time. perf samples the software
# cpu-clock event across the machine (this kind of machine has no hardware counters) and the
# report keeps the server process only.
#   scripts/profile-relay.sh [WINDOW] [SECONDS]   (defaults: 16, 8; SKIP_BUILD=1 uses the
#   release binaries as they are)
set -euo pipefail
WINDOW=${1:-16}
SECONDS_PER_RUN=${2:-8}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
command -v perf > /dev/null || { echo "perf not found (Debian: linux-perf)" >&2; exit 1; }
# Line tables only: symbols and inlined frames in the report, the optimised code unchanged.
[ -n "${SKIP_BUILD:-}" ] || CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p sotto -p sotto-bench --bin sotto-server --bin sotto-bench
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
for system in sotto-json sotto; do
    perf record -q -e cpu-clock -F 1999 -a -o "$W/$system.data" -- \
        "$ROOT/target/release/sotto-bench" --systems "$system" --windows "$WINDOW" \
        --seconds "$SECONDS_PER_RUN" --warmup 1 --backlog 0 --e2ee-groups 0 --crypto-seconds 0 \
        --idle 0 --kt 0 --daemon-sends 0 --out "$W/$system" > "$W/$system.out" 2>&1
    echo "== $system (window $WINDOW):$(grep -m1 -o ' [0-9]* msgs/s.*' "$W/$system.out" || true)"
    # The server's threads are named like the load generator's (by their runtime): find the
    # process by its main thread's name, then take all its threads.
    perf script -i "$W/$system.data" -F comm,pid,tid 2> /dev/null \
        | awk '{ split($2, t, "/"); print t[1], t[2], $1 }' > "$W/$system.threads"
    pid=$(awk '$3 == "sotto-server" { print $1; exit }' "$W/$system.threads")
    tids=$(awk -v p="$pid" '$1 == p { print $2 }' "$W/$system.threads" | sort -u | paste -sd,)
    echo "-- samples per server thread (one sample = 0.5 ms of CPU)"
    awk -v p="$pid" '$1 == p { n[$3]++ } END { for (c in n) print n[c], c }' "$W/$system.threads" \
        | sort -rn | head -5
    echo "-- top functions by self time, % of the server's samples"
    perf report -i "$W/$system.data" --tid "$tids" --no-children --sort dso,symbol \
        --stdio -g none --percentage relative --percent-limit 1 2> /dev/null \
        | grep -v '^#' | grep -v '^$' | cut -c1-110 | head -30
done
