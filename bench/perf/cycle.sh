#!/usr/bin/env bash
# Where a send's cycle goes: runs `wxpush-bench e2e` against one sandbox and samples it every
# 100 ms with bench/perf/cycle.py (the pusher's limit, its mean latency and requests in flight,
# the sandbox's own latency and requests in flight, the CPU of the pusher, the sandbox and the
# tool). Optionally the bare loop too, for its CPU and the sandbox's latency under it.
#
#   FAULTS='{"latency":"25ms","jitter":"50ms"}' CONC='{}' ROUNDS=2 bench/perf/cycle.sh
#
# PUSHER_BIN picks the pusher, TOOL_BIN the e2e tool; LOOP=1 also runs the loop of TASKS (default 1,024) each round;
# N (default 30000) messages a run; OUT (default bench/perf/results/cycle).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-30000}
ROUNDS=${ROUNDS:-1}
TASKS=${TASKS:-1024}
LATENCY=${LATENCY:-2ms}
OUT=${OUT:-bench/perf/results/cycle}
# shellcheck source=bench/perf/lib.sh
source bench/perf/lib.sh
conc=${CONC:-"{}"}
for round in $(seq "$ROUNDS"); do
  faults "${FAULTS:-$base_faults}"
  start_pusher "cycle-$round" "$conc"
  "${TOOL_BIN:-$BIN/wxpush-bench}" e2e --pusher "$PUSHER" --token "$TOKEN" --sandbox "$SB" \
    --pid "$PUSHER_PID" --n "$N" --prefix "wx-cycle-$round-" >"$OUT/wxpush-$round.json" &
  tool=$!
  python3 bench/perf/cycle.py "$PUSHER" "$SB" "$PUSHER_PID" "$SB_PID" "$tool" \
    "$OUT/cycle-$round.json" >"$OUT/cycle-$round.txt"
  wait "$tool"
  stop_pusher
  rm -rf "$work/cycle-$round"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("round %s: %.0f msgs/s, %.1f µs CPU/msg" % (sys.argv[2], r["rate"], r["cpu_us_per_msg"]))' \
    "$OUT/wxpush-$round.json" "$round"
  tail -1 "$OUT/cycle-$round.txt"
  if [[ ${LOOP:-0} == 1 ]]; then
    faults "${FAULTS:-$base_faults}"
    run_loop "cycle-$round" "$N" "$TASKS" &
    tool=$!
    # The loop has no pusher: its own pid stands in for it (and for the tool).
    sleep 0.05
    loop_pid=$(pgrep -P "$tool" -f 'wxpush-bench loop' | head -1 || true)
    python3 bench/perf/cycle.py "http://127.0.0.1:1" "$SB" "${loop_pid:-$tool}" "$SB_PID" \
      "${loop_pid:-$tool}" "$OUT/cycle-loop-$round.json" >"$OUT/cycle-loop-$round.txt" || true
    wait "$tool"
    echo "loop: $(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["rate"]))' "$OUT/loop-cycle-$round.json") msgs/s"
    tail -1 "$OUT/cycle-loop-$round.txt"
  fi
done
