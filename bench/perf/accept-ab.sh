#!/usr/bin/env bash
# Compares two pusher binaries on the cost of accepting: a pusher whose WeChat is unreachable
# (nothing is sent) takes N messages from `wxpush-bench fill` (batches), and the process's CPU
# and its store writer thread's (`wxpush-store-wr`) are read from /proc before and after.
# Alternates A B A B ... ROUNDS times (default 4; N default 30000). Prints per run: CPU per
# accepted message of the whole pusher, of its writer, and the accept rate.
#
#   bench/perf/accept-ab.sh OLD_PUSHER_BINARY [NEW_PUSHER_BINARY]   # B defaults to this tree's build
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-30000}
ROUNDS=${ROUNDS:-4}
OUT=${OUT:-bench/perf/results/accept-ab}
LATENCY=2ms
TASKS=1
A=$1
# shellcheck source=bench/perf/lib.sh
source bench/perf/lib.sh
B=${2:-$BIN/wxpush-pusher}
dead_port=$(free_port)
ticks() { awk '{print $14 + $15}' "$1/stat"; } # utime + stime of a process or thread
writer_ticks() {
  local t
  for t in /proc/"$PUSHER_PID"/task/*; do
    if grep -q '^wxpush-store-wr' "$t/comm"; then ticks "$t"; return; fi
  done
  echo 0
}
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for who in A B; do
    if [[ $who == A ]]; then PUSHER_BIN=$A; else PUSHER_BIN=$B; fi
    start_pusher "accept-$round-$who" '{}' "http://127.0.0.1:$dead_port"
    c0=$(ticks /proc/"$PUSHER_PID"); w0=$(writer_ticks); t0=$(date +%s.%N)
    "$BIN/wxpush-bench" fill --pusher "$PUSHER" --token "$TOKEN" --n "$N" >/dev/null
    t1=$(date +%s.%N); c1=$(ticks /proc/"$PUSHER_PID"); w1=$(writer_ticks)
    python3 -c "import sys; c0,c1,w0,w1,t0,t1,n,hz=map(float,sys.argv[1:]); \
print(f'$who round $round: {(c1-c0)/hz*1e6/n:.1f} µs CPU per accepted message, writer {(w1-w0)/hz*1e6/n:.1f} µs, {n/(t1-t0):.0f} msgs/s')" \
      "$c0" "$c1" "$w0" "$w1" "$t0" "$t1" "$N" "$hz"
    stop_pusher
    rm -rf "$work/accept-$round-$who"
  done
done
