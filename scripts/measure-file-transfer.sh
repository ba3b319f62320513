#!/usr/bin/env bash
# Sends a file of SIZE MiB (default 1024; 4096 for the largest allowed) from one account to
# another through a fresh release sotto-server on loopback, downloads it, checks it is
# identical, and prints throughput and peak memory of both clients and the server.
#   cargo build --release -p sotto && scripts/measure-file-transfer.sh 4096
set -euo pipefail
SIZE=${1:-1024}
B="$(cd "$(dirname "$0")/.." && pwd)/target/release"
W=$(mktemp -d)
trap 'kill $SPID 2>/dev/null || true; rm -rf "$W"' EXIT
export SOTTO_PASSPHRASE="a long passphrase for measuring"
head -c $((SIZE << 20)) /dev/urandom > "$W/file.bin"
"$B/sotto-server" --data "$W/data" --listen 127.0.0.1:0 --registration open --blob-quota 8G \
    > "$W/server.out" 2> "$W/server.err" &
SPID=$!
for _ in $(seq 50); do grep -q http "$W/server.out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[^ ]*' "$W/server.out")
"$B/sotto" --home "$W/alice" register alice@localhost --server "$URL" > /dev/null
"$B/sotto" --home "$W/bob" register bob@localhost --server "$URL" > /dev/null
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
peak() { local max=0 r; while kill -0 "$1" 2>/dev/null; do r=$(rss "$1"); [ "${r:-0}" -gt "$max" ] && max=$r; sleep 0.05; done; echo "$max"; }
server_peak() { local max=0 r; while [ ! -f "$W/stop" ]; do r=$(rss $SPID); [ "${r:-0}" -gt "$max" ] && max=$r; sleep 0.05; done; echo "$max" > "$W/server.peak"; }
S0=$(rss $SPID)
server_peak &
T0=$(date +%s.%N)
"$B/sotto" --home "$W/alice" --json send-file bob@localhost "$W/file.bin" > "$W/sent.json" &
P=$!; UP_PEAK=$(peak $P); wait $P
T1=$(date +%s.%N)
"$B/sotto" --home "$W/bob" --json sync > /dev/null
ID=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$W/sent.json")
T2=$(date +%s.%N)
"$B/sotto" --home "$W/bob" --json download "$ID" --out "$W/copy.bin" > /dev/null &
P=$!; DOWN_PEAK=$(peak $P); wait $P
T3=$(date +%s.%N)
touch "$W/stop"; sleep 0.2
cmp "$W/file.bin" "$W/copy.bin"
python3 - "$SIZE" "$T0" "$T1" "$T2" "$T3" "$UP_PEAK" "$DOWN_PEAK" "$S0" "$(cat "$W/server.peak")" <<'PY'
import sys
size, t0, t1, t2, t3, up, down, s0, sp = map(float, sys.argv[1:])
print(f"{size:.0f} MiB, identical after the round trip")
print(f"upload   {t1-t0:6.2f} s  {size/(t1-t0):5.0f} MiB/s  client peak RSS {up/1024:5.1f} MiB")
print(f"download {t3-t2:6.2f} s  {size/(t3-t2):5.0f} MiB/s  client peak RSS {down/1024:5.1f} MiB")
print(f"server RSS {s0/1024:.1f} MiB at start, {sp/1024:.1f} MiB at peak")
PY
