#!/usr/bin/env bash
# The engine benchmark: end-to-end delivered messages/s through wxpush-pusher, next to the
# sandbox's own raw request rate, measured against the same sandbox process in the same run.
#
#   bench/engine/run.sh                      # defaults below
#   COUNT=100000 CONNS=128 bench/engine/run.sh
#
# 1. builds the release binaries; 2. starts wxpush-sandbox; 3. wrk hammers its template-send
# route directly (raw rate); 4. `wxpush-pusher demo --sandbox-url` starts a pusher on a temp
# store and pushes COUNT messages through the HTTP API (batches), waiting for every delivery.
# Both numbers are printed; nothing is asserted (a benchmark reports, it does not judge).
set -euo pipefail
cd "$(dirname "$0")/../.."

COUNT=${COUNT:-50000}          # messages through the pusher
BATCH=${BATCH:-100}            # messages per API request
PRODUCERS=${PRODUCERS:-8}      # concurrent API requests
IN_FLIGHT=${IN_FLIGHT:-128}    # the pusher's concurrency.maxInFlight
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNS=${WRK_CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
APPID=wxbench000000000
SECRET=bench-secret

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -p wxpush-pusher -p wxpush-sandbox --bins >&2
BIN="${CARGO_TARGET_DIR:-target}/release"

work=$(mktemp -d)
cleanup() { [[ -n "${SB_PID:-}" ]] && kill "$SB_PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/wxpush-sandbox" --listen 127.0.0.1:0 --appid "$APPID" --secret "$SECRET" \
  --daily-quota unlimited >"$work/sandbox.out" 2>"$work/sandbox.err" &
SB_PID=$!
for _ in $(seq 100); do
  [[ -s "$work/sandbox.out" ]] && break
  sleep 0.05
done
BASE=$(sed -n 's/^wxpush-sandbox listening on //p' "$work/sandbox.out" | head -1)
[[ -n "$BASE" ]] || { echo "the sandbox did not start:" >&2; cat "$work/sandbox.err" >&2; exit 1; }

TOKEN=$(curl -sf -X POST "$BASE/cgi-bin/stable_token" -H 'Content-Type: application/json' \
  -d "{\"grant_type\":\"client_credential\",\"appid\":\"$APPID\",\"secret\":\"$SECRET\",\"force_refresh\":false}" |
  sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[[ -n "$TOKEN" ]] || { echo "no access_token from the sandbox" >&2; exit 1; }

echo "== sandbox raw rate: wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION (template send) =="
wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" -s bench/engine/send.lua \
  "$BASE/cgi-bin/message/template/send?access_token=$TOKEN" | tee "$work/wrk.txt"
RAW=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")

echo
echo "== end to end: $COUNT messages through wxpush-pusher (batches of $BATCH, $PRODUCERS producers, maxInFlight $IN_FLIGHT) =="
RUST_LOG=${RUST_LOG:-warn} "$BIN/wxpush-pusher" demo --sandbox-url "$BASE" --appid "$APPID" --secret "$SECRET" \
  --count "$COUNT" --batch "$BATCH" --concurrency "$PRODUCERS" --max-in-flight "$IN_FLIGHT" --json |
  tee "$work/demo.json"
E2E=$(sed -n 's/.*"delivery_rate": \([0-9.]*\).*/\1/p' "$work/demo.json")

echo
printf 'sandbox raw rate:            %10.0f requests/s\n' "$RAW"
printf 'pusher end-to-end delivery:  %10.0f messages/s (accepted -> delivered, durable)\n' "$E2E"
echo "machine: $(nproc) cores, $(uname -sr)"
