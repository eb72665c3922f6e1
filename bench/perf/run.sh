#!/usr/bin/env bash
# The performance benchmark of issue 13, in one command:
#
#   bench/perf/run.sh                 # defaults below: a few minutes
#   N=100000 bench/perf/run.sh        # larger runs
#   PLOT=0 bench/perf/run.sh          # no plots (no venv)
#   SCENARIOS=sweep LATENCIES="100 50" REDIS=0 OUT=/tmp/sweep bench/perf/run.sh
#                                     # the latency sweep alone (give a fresh OUT: the
#                                     # table reads every result file it finds there)
#   SCENARIOS="overload memory" REDIS=0 OUT=/tmp/x bench/perf/run.sh
#                                     # some scenarios: sweep clean tail flaky outage
#                                     # overload accept memory (REDIS picks the Redis one)
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
#    before them, the latency sweep (issue 20; LATENCIES, N_SWEEP): at 2, 20 ± 10, 50 ± 25 and
#    100 ± 50 ms, and 20 ± 10 ms with 1 % of responses hanging 30 s, the loop at 256 and 1,024
#    tasks and wxpush with its defaults, with maxInFlight 64, and at fixed 256 and 1,024, with
#    connections opened and the most requests in flight; and the Redis store with one pod
#    (REDIS=0 skips it);
# 4. prints the tables (bench/perf/report.py) and draws three PNGs (bench/perf/plot.py,
#    matplotlib in a local venv bench/.venv): throughput against concurrency (overload), the
#    latency CDF (clean and tail), and rate against latency (the sweep).
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
LATENCIES=${LATENCIES:-"2 20 50 100 20hang"} # the latency sweep ("" to skip it)
N_SWEEP=${N_SWEEP:-30000}      # messages per run of the latency sweep
REDIS=${REDIS:-1}              # the Redis store with one pod (needs redis-server)
SCENARIOS=${SCENARIOS:-all}    # "all", or a list of: sweep clean tail flaky outage overload accept memory
SWEEP_TASKS=${SWEEP_TASKS:-"256 1024"} # the loop's task counts in the sweep
SWEEP_CONC=${SWEEP_CONC:-"default ceiling64 fixed256 fixed1024"} # wxpush's settings in the sweep
OUT=${OUT:-bench/perf/results}
PLOT=${PLOT:-1}

# shellcheck source=bench/perf/lib.sh
source bench/perf/lib.sh

# wxpush's `concurrency` in the scenarios that use its defaults (DEFAULT_CONC='{"maxInFlight":
# 2048}' measures another ceiling there; the sweep's "default" stays '{}').
default=${DEFAULT_CONC:-'{}'}
want() { [[ "$SCENARIOS" == all || " $SCENARIOS " == *" $1 "* ]]; }

# The latency sweep (issue 20): per latency, the bare loop at 256 and 1,024 tasks, and wxpush
# with its defaults, with the old ceiling of 64, and at fixed 256 and 1,024 in flight. The
# sandbox's latency is LATENCY_MIN plus a uniform draw from [0, JITTER]: "20" is 20 ± 10 ms.
# "20hang": 20 ± 10 ms with 1 % of responses hanging 30 s; it runs last, since hung requests
# stay at the sandbox for 30 s.
declare -A lat_faults=(
  [2]='{"latency":"2ms"}'
  [20]='{"latency":"10ms","jitter":"20ms"}'
  [50]='{"latency":"25ms","jitter":"50ms"}'
  [100]='{"latency":"50ms","jitter":"100ms"}'
  [20hang]='{"latency":"10ms","jitter":"20ms","hang_share":0.01,"hang":"30s"}'
)
declare -A sweep_conc=(
  [default]='{}'
  [ceiling64]='{"maxInFlight": 64}'
  [fixed256]='{"maxInFlight": 256, "adaptive": false}'
  [fixed1024]='{"maxInFlight": 1024, "adaptive": false}'
  [ceiling2048]='{"maxInFlight": 2048}'
  [fixed2048]='{"maxInFlight": 2048, "adaptive": false}'
)
want sweep || LATENCIES=""
for lat in $LATENCIES; do
  f=${lat_faults[$lat]}
  for tasks in $SWEEP_TASKS; do
    faults "$f"
    run_loop "lat$lat-t$tasks" "$N_SWEEP" "$tasks"
  done
  for c in $SWEEP_CONC; do
    faults "$f"
    run_e2e "lat$lat-$c" "$N_SWEEP" "${sweep_conc[$c]}"
  done
done

# The Redis store with one pod, clean (against the embedded store's clean run below).
if [[ "$REDIS" == 1 ]]; then
  command -v redis-server >/dev/null || { echo "redis-server is needed (scripts/setup.sh)" >&2; exit 1; }
  rport=$(free_port)
  mkdir -p "$work/redis"
  redis-server --port "$rport" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
    --save '' --dir "$work/redis" >"$work/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
  faults "$base_faults"
  QUEUE_JSON="{\"redis\": {\"url\": \"redis://127.0.0.1:$rport\"}}" run_e2e redis-clean "$N" "$default"
  kill "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=
fi

if want clean; then
# clean
faults "$base_faults"
run_loop clean "$N"
faults "$base_faults"
run_e2e clean "$N" "$default"
faults "$base_faults"
run_e2e clean-256 "$N" '{"maxInFlight": 256}'
faults "$base_faults"
run_e2e clean-fixed64 "$N" '{"maxInFlight": 64, "adaptive": false}'
fi

if want tail; then

# tail: 1 % of responses hang 30 s
tail_faults="{\"latency\":\"$LATENCY\",\"hang_share\":0.01,\"hang\":\"30s\"}"
faults "$tail_faults"
run_loop tail "$N"
faults "$tail_faults"
run_e2e tail "$N" "$default"
fi

if want flaky; then

# flaky: 5 % errcode -1
flaky_faults="{\"latency\":\"$LATENCY\",\"errcodes\":{\"-1\":0.05}}"
faults "$flaky_faults"
run_loop flaky "$N"
faults "$flaky_faults"
run_e2e flaky "$N" "$default"
fi

if want outage; then

# outage: WeChat away for OUTAGE s, starting 2 s in
outage_faults="{\"latency\":\"$LATENCY\",\"outage\":{\"after\":\"2s\",\"duration\":\"${OUTAGE}s\"}}"
faults "$outage_faults"
run_loop outage "$N_OUTAGE"
faults "$base_faults"
start_pusher outage "$default"
faults "$outage_faults"
# When the outage was scheduled (it starts 2 s later): report.py lines it up with the run.
echo "{\"unix\": $(date +%s.%N)}" >"$OUT/outage-faults-at.json"
echo "-- wxpush: outage ($N_OUTAGE messages)" >&2
"$BIN/wxpush-bench" e2e --pusher "$PUSHER" --token "$TOKEN" --sandbox "$SB" \
  --pid "$PUSHER_PID" --n "$N_OUTAGE" --prefix "wx-outage-" >"$OUT/wxpush-outage.json"
stop_pusher
fi

if want overload; then

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
fi

if want accept; then

# accepts: single messages at ACCEPT_RATE/s (delivered meanwhile), then RSS idle and queued
faults "$base_faults"
start_pusher accept "$default"
echo "-- single accepts at $ACCEPT_RATE/s" >&2
"$BIN/wxpush-bench" accept --pusher "$PUSHER" --token "$TOKEN" --rate "$ACCEPT_RATE" \
  --duration 5s >"$OUT/accept-single.json"
stop_pusher
fi

if want memory; then

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
fi

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "N=$N N_OUTAGE=$N_OUTAGE N_OVERLOAD=$N_OVERLOAD TASKS=$TASKS LATENCY=$LATENCY OUTAGE=${OUTAGE}s N_SWEEP=$N_SWEEP LATENCIES=$LATENCIES SCENARIOS=$SCENARIOS"
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
