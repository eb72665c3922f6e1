#!/usr/bin/env bash
# Compares two pusher binaries on the clean scenario of bench/perf/run.sh, against one sandbox,
# alternating A B A B ... so that the machine's drift hits both alike (a shared 2-core VM moves
# a single run's figures by a third). Prints each run and the medians of the rate and of the
# pusher's CPU per delivered message, with B's ratio to A.
#
#   bench/perf/ab.sh OLD_PUSHER_BINARY [NEW_PUSHER_BINARY]   # B defaults to this tree's build
#
# Build A from another commit with, e.g.:
#   git worktree add /tmp/base REV && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target \
#     cargo build --release -p wxpush-pusher --bin wxpush-pusher)
# ROUNDS (default 5) runs of N (default 30000) messages each; CONC, the pushers' `concurrency`
# (JSON, default {}: the defaults), e.g. CONC='{"maxInFlight": 256}'. FAULTS, the sandbox's
# faults (JSON, default: LATENCY alone), e.g. FAULTS='{"latency":"50ms","jitter":"100ms"}' for
# 100 ± 50 ms, or '{"latency":"2ms","capacity":32,"overload_latency_per_request":"250us"}' for
# run.sh's overload.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$(realpath "${1:?usage: bench/perf/ab.sh OLD_PUSHER [NEW_PUSHER]}")
N=${N:-30000}
ROUNDS=${ROUNDS:-5}
TASKS=${TASKS:-256}
LATENCY=${LATENCY:-2ms}
OUT=${OUT:-bench/perf/results/ab}

# shellcheck source=bench/perf/lib.sh
source bench/perf/lib.sh
B=$(realpath "${2:-$BIN/wxpush-pusher}")
conc=${CONC:-"{}"}
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    if [[ $side == A ]]; then PUSHER_BIN=$A; else PUSHER_BIN=$B; fi
    faults "${FAULTS:-$base_faults}" # also empties the sandbox's records of earlier runs
    run_e2e "$side-$round" "$N" "$conc"
    rm -rf "$work/$side-$round"
  done
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
med = {}
for side in "AB":
    runs = [json.load(open(f"{out}/wxpush-{side}-{r}.json")) for r in range(1, rounds + 1)]
    for r in runs:
        print(f"{side}: {r['rate']:8.0f} msgs/s  {r['cpu_us_per_msg']:6.1f} µs CPU/msg")
    med[side] = (statistics.median(r["rate"] for r in runs),
                 statistics.median(r["cpu_us_per_msg"] for r in runs))
(ra, ca), (rb, cb) = med["A"], med["B"]
print(f"median A: {ra:.0f} msgs/s, {ca:.1f} µs/msg; B: {rb:.0f} msgs/s, {cb:.1f} µs/msg")
print(f"B/A: rate {rb / ra:.2f}x, CPU per message {cb / ca:.2f}x")
PY
