#!/usr/bin/env bash
# The performance benchmark of issue 13, in one command:
#
#   bench/perf/run.sh                 # defaults below: a few minutes
#   N=100000 bench/perf/run.sh        # larger runs
#   PLOT=0 bench/perf/run.sh          # no plots (no venv)
#
# 1. builds the release binaries (pusher, sandbox, bench tools);
# 2. starts ONE wxpush-sandbox answering in LATENCY (2 ms) that every scenario shares (faults
#    are switched through PUT /__faults, counters reset through POST /__reset);
# 3. per scenario runs the bare reqwest loop (bench/loop: TASKS tasks, no queue, no durability)
#    and then wxpush end to end (a fresh `wxpush-pusher serve` on a fresh store; messages
#    accepted through the batch route, durably, then delivered), measuring rates, CPU per
#    delivered message (/proc/<pid>/stat) and RSS;
#    scenarios: clean, tail (1 % of responses hang 30 s), flaky (5 % errcode -1), outage
#    (WeChat away OUTAGE s), overload (upstream capacity 32: a sweep of fixed maxInFlight
#    against the adaptive default), clean with maxInFlight 256, single accepts at 2k/s, and
#    RSS idle and with QUEUED messages queued;
# 4. prints the table (bench/perf/report.py) and draws two PNGs (bench/perf/plot.py, matplotlib
#    in a local venv bench/.venv): throughput against concurrency (overload) and the latency CDF
#    (clean and tail).
#
# Results (JSON per scenario, the table, the PNGs) go to OUT (default bench/perf/results).
# A benchmark reports; it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-30000}                  # messages per scenario (clean, tail, flaky)
N_OUTAGE=${N_OUTAGE:-60000}    # messages in the outage scenario
N_OVERLOAD=${N_OVERLOAD:-10000} # messages per overload run
SWEEP=${SWEEP:-"8 16 32 48 64 128"} # fixed maxInFlight values of the overload sweep
QUEUED=${QUEUED:-100000}       # messages queued for the RSS measurement
TASKS=${TASKS:-256}            # the loop's tasks
LATENCY=${LATENCY:-2ms}        # the sandbox's latency
OUTAGE=${OUTAGE:-10}           # seconds
ACCEPT_RATE=${ACCEPT_RATE:-2000}
OUT=${OUT:-bench/perf/results}
PLOT=${PLOT:-1}
APPID=wxbench000000000
SECRET=bench-secret
TOKEN=bench-token-0123456789abcdef

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -p wxpush-pusher -p wxpush-sandbox -p wxpush-bench --bins >&2
BIN="$CARGO_TARGET_DIR/release"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d)
PUSHER_PID=
SB_PID=
cleanup() {
  [[ -n "$PUSHER_PID" ]] && kill "$PUSHER_PID" 2>/dev/null || true
  [[ -n "$SB_PID" ]] && kill "$SB_PID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$BIN/wxpush-sandbox" --listen 127.0.0.1:0 --appid "$APPID" --secret "$SECRET" \
  --daily-quota unlimited --stable-token-minute-quota unlimited --fault-latency "$LATENCY" \
  >"$work/sandbox.out" 2>"$work/sandbox.err" &
SB_PID=$!
for _ in $(seq 200); do [[ -s "$work/sandbox.out" ]] && break; sleep 0.05; done
SB=$(sed -n 's/^wxpush-sandbox listening on //p' "$work/sandbox.out" | head -1)
[[ -n "$SB" ]] || { echo "the sandbox did not start:" >&2; cat "$work/sandbox.err" >&2; exit 1; }
echo "sandbox $SB (pid $SB_PID), latency $LATENCY" >&2

faults() { # faults JSON
  # The sandbox refuses new connections during an outage: wait until it listens again.
  for _ in $(seq 400); do curl -sf "$SB/__health" >/dev/null 2>&1 && break; sleep 0.05; done
  curl -sf -X PUT "$SB/__faults" -H 'Content-Type: application/json' -d "$1" >/dev/null
  curl -sf -X POST "$SB/__reset" >/dev/null
  curl -sf -X PUT "$SB/__faults" -H 'Content-Type: application/json' -d "$1" >/dev/null
}
base_faults="{\"latency\":\"$LATENCY\"}"

# start_pusher NAME CONCURRENCY_JSON [API_BASE]
start_pusher() {
  local name=$1 conc=$2 api=${3:-$SB} port dir
  port=$(free_port)
  dir="$work/$name"
  mkdir -p "$dir"
  cat >"$dir/pusher.yaml" <<EOF
{"listen": "127.0.0.1:$port", "channel": "bench", "apiBaseUrl": "$api",
 "credentials": {"appId": "$APPID", "appSecret": "$SECRET"},
 "auth": {"token": "$TOKEN"},
 "queue": {"embedded": {"path": "$dir/queue"}},
 "concurrency": $conc,
 "rateLimit": {"perSecond": 1000000, "burst": 1000000, "dailyQuota": 0},
 "shutdown": {"drainTimeout": "1s"}}
EOF
  RUST_LOG=${RUST_LOG:-warn} "$BIN/wxpush-pusher" serve --config "$dir/pusher.yaml" \
    >"$dir/out" 2>"$dir/err" &
  PUSHER_PID=$!
  PUSHER="http://127.0.0.1:$port"
  for _ in $(seq 300); do
    grep -q 'listening on' "$dir/out" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "pusher $name did not start:" >&2
  cat "$dir/err" >&2
  exit 1
}

stop_pusher() {
  kill "$PUSHER_PID" 2>/dev/null || true
  wait "$PUSHER_PID" 2>/dev/null || true
  PUSHER_PID=
}

run_loop() { # NAME N
  echo "-- loop: $1 ($2 messages, $TASKS tasks)" >&2
  "$BIN/wxpush-bench" loop --sandbox "$SB" --n "$2" --tasks "$TASKS" --appid "$APPID" \
    --secret "$SECRET" --prefix "loop-$1-" >"$OUT/loop-$1.json"
}

run_e2e() { # NAME N CONCURRENCY_JSON
  echo "-- wxpush: $1 ($2 messages, concurrency $3)" >&2
  start_pusher "$1" "$3"
  "$BIN/wxpush-bench" e2e --pusher "$PUSHER" --token "$TOKEN" --sandbox "$SB" \
    --pid "$PUSHER_PID" --n "$2" --prefix "wx-$1-" >"$OUT/wxpush-$1.json"
  stop_pusher
}

default='{}'

# clean
faults "$base_faults"
run_loop clean "$N"
faults "$base_faults"
run_e2e clean "$N" "$default"
faults "$base_faults"
run_e2e clean-256 "$N" '{"maxInFlight": 256}'
faults "$base_faults"
run_e2e clean-fixed64 "$N" '{"maxInFlight": 64, "adaptive": false}'

# tail: 1 % of responses hang 30 s
tail_faults="{\"latency\":\"$LATENCY\",\"hang_share\":0.01,\"hang\":\"30s\"}"
faults "$tail_faults"
run_loop tail "$N"
faults "$tail_faults"
run_e2e tail "$N" "$default"

# flaky: 5 % errcode -1
flaky_faults="{\"latency\":\"$LATENCY\",\"errcodes\":{\"-1\":0.05}}"
faults "$flaky_faults"
run_loop flaky "$N"
faults "$flaky_faults"
run_e2e flaky "$N" "$default"

# outage: WeChat away for OUTAGE s, starting 2 s in
outage_faults="{\"latency\":\"$LATENCY\",\"outage\":{\"after\":\"2s\",\"duration\":\"${OUTAGE}s\"}}"
faults "$outage_faults"
run_loop outage "$N_OUTAGE"
faults "$base_faults"
start_pusher outage "$default"
faults "$outage_faults"
echo "-- wxpush: outage ($N_OUTAGE messages)" >&2
"$BIN/wxpush-bench" e2e --pusher "$PUSHER" --token "$TOKEN" --sandbox "$SB" \
  --pid "$PUSHER_PID" --n "$N_OUTAGE" --prefix "wx-outage-" >"$OUT/wxpush-outage.json"
stop_pusher

# overload: the upstream serves 32 at a time; each request beyond adds 250 us
over_faults="{\"latency\":\"$LATENCY\",\"capacity\":32,\"overload_latency_per_request\":\"250us\"}"
faults "$over_faults"
run_loop overload "$N_OVERLOAD"
for m in $SWEEP; do
  faults "$over_faults"
  run_e2e "overload-fixed$m" "$N_OVERLOAD" "{\"maxInFlight\": $m, \"adaptive\": false}"
done
faults "$over_faults"
run_e2e overload-adaptive "$N_OVERLOAD" "$default"

# accepts: single messages at ACCEPT_RATE/s (delivered meanwhile), then RSS idle and queued
faults "$base_faults"
start_pusher accept "$default"
echo "-- single accepts at $ACCEPT_RATE/s" >&2
"$BIN/wxpush-bench" accept --pusher "$PUSHER" --token "$TOKEN" --rate "$ACCEPT_RATE" \
  --duration 5s >"$OUT/accept-single.json"
stop_pusher

# memory: a pusher whose WeChat is unreachable (nothing leaves the queue)
dead_port=$(free_port)
start_pusher memory "$default" "http://127.0.0.1:$dead_port"
sleep 2
"$BIN/wxpush-bench" proc --pid "$PUSHER_PID" >"$OUT/rss-idle.json"
echo "-- batch accepts: $QUEUED messages queued (WeChat unreachable)" >&2
"$BIN/wxpush-bench" fill --pusher "$PUSHER" --token "$TOKEN" --n "$QUEUED" >"$OUT/accept-batch.json"
sleep 2
"$BIN/wxpush-bench" proc --pid "$PUSHER_PID" >"$OUT/rss-queued.json"
stop_pusher

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "N=$N N_OUTAGE=$N_OUTAGE N_OVERLOAD=$N_OVERLOAD TASKS=$TASKS LATENCY=$LATENCY OUTAGE=${OUTAGE}s"
  echo
  python3 bench/perf/report.py "$OUT" "$OUTAGE"
} | tee "$OUT/table.md"

if [[ "$PLOT" == 1 ]]; then
  if [[ ! -x bench/.venv/bin/python ]]; then
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install -q matplotlib
  fi
  bench/.venv/bin/python bench/perf/plot.py "$OUT"
fi
