#!/usr/bin/env bash
# Tests the running server against the committed OpenAPI document (docs/openapi.json) with
# schemathesis: generated requests, valid and not, to every operation, with and without a
# device's token. Fails on any 5xx, undocumented status, or response that does not match the
# document. Usage: scripts/schemathesis.sh [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-25}
venv=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi
cargo build --quiet --locked -p sotto --bin sotto-server --example api_token
work=$(mktemp -d)
# Rates raised so that generated traffic is answered rather than throttled (429 is documented
# all the same).
target/debug/sotto-server --data "$work/data" --listen 127.0.0.1:0 --registration open \
    --device-rate 100000 --registration-rate 1000000 --admin-listen off \
    > "$work/out" 2> "$work/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    grep -q listening "$work/out" 2>/dev/null && break
    sleep 0.1
done
url=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
[ -n "$url" ] || { cat "$work/log"; echo "the server did not start" >&2; exit 1; }
token=$(target/debug/examples/api_token "$url")
status=0
"$venv/bin/schemathesis" run docs/openapi.json --url "$url" --checks all --exclude-checks positive_data_acceptance \
    --header "Authorization: Bearer $token" --max-examples "$examples" --seed 7 \
    --workers 2 --warnings off --continue-on-failure || status=$?
if grep -q "panicked" "$work/log"; then
    echo "the server panicked:" >&2
    grep -A5 panicked "$work/log" >&2
    status=1
fi
exit $status
