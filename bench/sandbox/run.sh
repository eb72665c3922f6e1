#!/usr/bin/env bash
# Measures the sandbox's request rate with wrk against a release build on 127.0.0.1.
# Usage: bench/sandbox/run.sh [DURATION] [CONNECTIONS] [THREADS]
# Needs: wrk, curl, python3. Builds into $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10s}
CONNECTIONS=${2:-64}
THREADS=${3:-1}
TARGET=${CARGO_TARGET_DIR:-target}
# WXPUSH_SANDBOX_BIN=path skips the build and uses that binary.
BIN=${WXPUSH_SANDBOX_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release -q -p wxpush-sandbox --bin wxpush-sandbox
  BIN="$TARGET/release/wxpush-sandbox"
fi
OUT=$(mktemp)
"$BIN" --listen 127.0.0.1:0 --appid wxbench --secret benchsecret \
  --daily-quota unlimited --stable-token-minute-quota unlimited \
  --stable-token-daily-quota unlimited >"$OUT" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 100); do grep -q listening "$OUT" && break; sleep 0.05; done
BASE=$(sed -n 's/^wxpush-sandbox listening on //p' "$OUT")
TOKEN=$(curl -s -X POST "$BASE/cgi-bin/stable_token" \
  -d '{"grant_type":"client_credential","appid":"wxbench","secret":"benchsecret"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
echo "== template/send, no client_msg_id"
WX_TOKEN=$TOKEN wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/sandbox/send.lua "$BASE"
echo "== template/send, unique client_msg_id per request (dedup table grows)"
WX_TOKEN=$TOKEN WX_DEDUP=1 wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/sandbox/send.lua "$BASE"
echo "== stable_token"
WX_APPID=wxbench WX_SECRET=benchsecret wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
  -s bench/sandbox/stable_token.lua "$BASE"
echo "== stats"
curl -s "$BASE/__stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print({k: s[k] for k in ("requests_total","delivered_unique","duplicates_suppressed")}, "errcodes", s["errcodes"])'
