#!/usr/bin/env bash
# Profiles wxpush-pusher on the clean scenario of bench/perf/run.sh: `perf record -e cpu-clock -g`
# (these VMs have no hardware counters) on the pusher while N messages are accepted and
# delivered against one sandbox answering in 2 ms. Writes OUT/perf-report.txt (the hottest
# symbols, self and children; the samples stay in OUT/perf.data) and, when inferno is installed (`cargo install inferno`),
# OUT/flamegraph.svg.
#
#   bench/perf/profile.sh          # N=30000
#   CALLGRAPH="--call-graph dwarf,16384" FREQ=299 N=15000 bench/perf/profile.sh
#                                  # call chains through glibc too (who calls malloc)
#   FAULTS='{"latency":"50ms","jitter":"100ms"}' CONCURRENCY='{"maxInFlight":1024,"adaptive":false}' \
#     bench/perf/profile.sh        # 100 ± 50 ms, 1,024 in flight (the sandbox's faults and
#                                  # the pusher's `concurrency`, as in run.sh's sweep)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-30000}
OUT=${OUT:-bench/perf/results}
APPID=wxbench000000000
SECRET=bench-secret
TOKEN=bench-token-0123456789abcdef
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -p wxpush-pusher -p wxpush-sandbox -p wxpush-bench --bins >&2
BIN="$CARGO_TARGET_DIR/release"
mkdir -p "$OUT"
work=$(mktemp -d)
cleanup() { kill "${PUSHER_PID:-}" "${SB_PID:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN/wxpush-sandbox" --listen 127.0.0.1:0 --appid "$APPID" --secret "$SECRET" \
  --daily-quota unlimited --fault-latency 2ms >"$work/sb.out" 2>/dev/null &
SB_PID=$!
for _ in $(seq 200); do [[ -s "$work/sb.out" ]] && break; sleep 0.05; done
SB=$(sed -n 's/^wxpush-sandbox listening on //p' "$work/sb.out" | head -1)
if [[ -n "${FAULTS:-}" ]]; then
  curl -sf -X PUT "$SB/__faults" -H 'Content-Type: application/json' -d "$FAULTS" >/dev/null
fi
conc=${CONCURRENCY:-'{}'}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/pusher.yaml" <<EOF2
{"listen": "127.0.0.1:$port", "channel": "bench", "apiBaseUrl": "$SB",
 "credentials": {"appId": "$APPID", "appSecret": "$SECRET"}, "auth": {"token": "$TOKEN"},
 "queue": {"embedded": {"path": "$work/queue"}},
 "concurrency": $conc,
 "rateLimit": {"perSecond": 1000000, "burst": 1000000, "dailyQuota": 0}}
EOF2
RUST_LOG=warn "$BIN/wxpush-pusher" serve --config "$work/pusher.yaml" >"$work/p.out" 2>/dev/null &
PUSHER_PID=$!
for _ in $(seq 300); do grep -q 'listening on' "$work/p.out" 2>/dev/null && break; sleep 0.05; done
perf record -e cpu-clock -F "${FREQ:-999}" ${CALLGRAPH:--g} -p "$PUSHER_PID" -o "$OUT/perf.data" 2>/dev/null &
PERF_PID=$!
sleep 0.5
"$BIN/wxpush-bench" e2e --pusher "http://127.0.0.1:$port" --token "$TOKEN" --sandbox "$SB" \
  --pid "$PUSHER_PID" --n "$N" --prefix prof- | tee "$OUT/profile-run.json" >&2
kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
  | grep '%' | head -80 >"$OUT/perf-report.txt" || true
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep '%' | head -120 >"$OUT/perf-report-children.txt" || true
if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph >"$OUT/flamegraph.svg"
fi
echo "profile: $OUT/perf-report.txt $OUT/perf-report-children.txt" >&2
