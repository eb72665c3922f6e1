#!/usr/bin/env bash
# Counts the pusher's heap allocations per delivered message on the clean scenario of
# bench/perf/run.sh (one sandbox answering in LATENCY, default 2 ms; N messages, default 30000;
# ROUNDS runs, default 3). The pusher is built with the feature `alloc-count` (a counting global
# allocator; never in the shipped binary), which exposes `wxpush_allocations_total`;
# `wxpush-bench e2e` reads it before the first accept and after the last delivery, so the
# figure holds everything the process allocated for those messages (accepts, store, sends,
# outcomes). Prints each run's allocations and bytes per message, and their medians.
#
#   bench/perf/allocs.sh
#   ALLOCS_BIN=/path/to/an/alloc-count/build bench/perf/allocs.sh   # another build's count
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-30000}
ROUNDS=${ROUNDS:-3}
TASKS=${TASKS:-256}
LATENCY=${LATENCY:-2ms}
OUT=${OUT:-bench/perf/results/allocs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}

if [[ -z "${ALLOCS_BIN:-}" ]]; then
  cargo build --release -p wxpush-pusher --features alloc-count --bin wxpush-pusher >&2
  ALLOCS_BIN=$(mktemp -d)/wxpush-pusher-alloc-count
  cp "$CARGO_TARGET_DIR/release/wxpush-pusher" "$ALLOCS_BIN"
fi
# shellcheck source=bench/perf/lib.sh
source bench/perf/lib.sh
PUSHER_BIN=$ALLOCS_BIN
for round in $(seq "$ROUNDS"); do
  faults "$base_faults"
  run_e2e "allocs-$round" "$N" "{}"
  rm -rf "$work/allocs-$round"
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{out}/wxpush-allocs-{i}.json")) for i in range(1, rounds + 1)]
for i, r in enumerate(runs, 1):
    if r.get("allocs_per_msg") is None:
        sys.exit("the pusher exposes no wxpush_allocations_total: build it with --features alloc-count")
    print(f"run {i}: {r['allocs_per_msg']:.1f} allocations and {r['alloc_bytes_per_msg']:.0f} bytes "
          f"per delivered message, "
          f"{r['rate']:.0f} msgs/s, {r['cpu_us_per_msg']:.1f} µs CPU/msg")
med = statistics.median(r["allocs_per_msg"] for r in runs)
print(f"median: {med:.1f} allocations per delivered message ({rounds} runs of {runs[0]['delivered']})")
PY
