#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS seconds each (default 10: the CI smoke run),
# starting from the committed corpus. New inputs that find new coverage are added to
# fuzz/corpus/; a crash stops the run and leaves its input in fuzz/artifacts/.
#
#   scripts/fuzz.sh            # smoke: 10 s per target
#   scripts/fuzz.sh 1800       # a long run: 30 min per target
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-10}"
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    echo "== fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|Done|==[0-9]+==|SUMMARY)' || true
    # libFuzzer exits non-zero on a crash; the pipe above hides that, so check for artifacts.
    if compgen -G "artifacts/$target/*" >/dev/null; then
        echo "fuzz target $target crashed: see fuzz/artifacts/$target" >&2
        exit 1
    fi
done
