#!/usr/bin/env bash
# The Redis store with one pod against the embedded store, on the clean scenario of
# bench/perf/run.sh (one sandbox answering in LATENCY), alternating embedded, Redis, embedded,
# Redis ... so that the shared machine's drift hits both alike. For each Redis run: Redis's CPU
# per delivered message (/proc/<pid>/stat) and its commands per delivered message
# (`INFO commandstats`, scripts' inner commands included), from a fresh redis-server with AOF
# on and `appendfsync everysec`, as in production. Prints each run, the medians and the ratio.
#
#   bench/perf/redis.sh                   # ROUNDS=3 rounds of N=30000 messages
#   CONC='{"maxInFlight": 64}' bench/perf/redis.sh
#   PROFILE_REDIS=1 ROUNDS=1 bench/perf/redis.sh   # also `perf record` redis-server: OUT/*-perf.txt
#   OLD_PUSHER=/tmp/old/wxpush-pusher bench/perf/redis.sh
#                                         # each round also runs Redis with another build's pusher
#   AOF=no ROUNDS=1 bench/perf/redis.sh   # Redis without its append-only file: what the AOF costs
#                                         # (production keeps it on: docs/scaling.md)
#   SCRIPTS=1 ROUNDS=1 bench/perf/redis.sh # also each script's share of Redis's time, from its
#                                         # slow log with every command logged: OUT/*-scripts.txt
#                                         # (the logging itself costs Redis time: shares, not rates)
#
# A benchmark reports; it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-30000}
ROUNDS=${ROUNDS:-3}
TASKS=${TASKS:-256}
LATENCY=${LATENCY:-2ms}
OUT=${OUT:-bench/perf/results/redis}

command -v redis-server >/dev/null || { echo "redis-server is needed (scripts/setup.sh)" >&2; exit 1; }
# shellcheck source=bench/perf/lib.sh
source bench/perf/lib.sh
conc=${CONC:-"{}"}
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_redis() { # NAME: one Redis run of the pusher PUSHER_BIN (default: this tree's build)
  local name=$1 rport rdir cpu0 cpu1
  rport=$(free_port)
  rdir="$work/$name-data"
  mkdir -p "$rdir"
  redis-server --port "$rport" --bind 127.0.0.1 --appendonly "${AOF:-yes}" --appendfsync everysec \
    --save '' --dir "$rdir" >"$work/$name.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done
  faults "$base_faults"
  local log=${RUST_LOG:-warn}
  [[ "${SCRIPTS:-0}" == 1 ]] && log="$log,wxpush_pusher::store::redis=debug"
  RUST_LOG=$log QUEUE_JSON="{\"redis\": {\"url\": \"redis://127.0.0.1:$rport\"}}" start_pusher "$name" "$conc"
  redis-cli -p "$rport" config resetstat >/dev/null
  if [[ "${SCRIPTS:-0}" == 1 ]]; then
    redis-cli -p "$rport" config set slowlog-max-len 1000000 >/dev/null
    redis-cli -p "$rport" slowlog reset >/dev/null
    redis-cli -p "$rport" config set slowlog-log-slower-than 0 >/dev/null
  fi
  cpu0=$(cpu_ticks "$REDIS_PID")
  PERF_PID=
  if [[ "${PROFILE_REDIS:-0}" == 1 ]]; then
    perf record -e cpu-clock -g -p "$REDIS_PID" -o "$OUT/$name-perf.data" 2>/dev/null &
    PERF_PID=$!
  fi
  echo "-- wxpush: $name ($N messages, concurrency $conc)" >&2
  "$BIN/wxpush-bench" e2e --pusher "$PUSHER" --token "$TOKEN" --sandbox "$SB" \
    --pid "$PUSHER_PID" --n "$N" --prefix "wx-$name-" >"$OUT/wxpush-$name.json"
  cpu1=$(cpu_ticks "$REDIS_PID")
  if [[ -n "$PERF_PID" ]]; then
    kill -INT "$PERF_PID"
    wait "$PERF_PID" || true
    perf report -i "$OUT/$name-perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^$' >"$OUT/$name-perf.txt" || true
  fi
  redis-cli -p "$rport" info commandstats >"$OUT/$name-commandstats.txt"
  if [[ "${SCRIPTS:-0}" == 1 ]]; then
    redis-cli -p "$rport" config set slowlog-log-slower-than 10000 >/dev/null
    python3 bench/perf/slowlog.py "$rport" "$N" "$work/$name/err" >"$OUT/$name-scripts.txt"
    cat "$OUT/$name-scripts.txt" >&2
  fi
  stop_pusher
  python3 - "$OUT/$name-cpu.json" "$cpu0" "$cpu1" "$TICK" "$N" <<'PY'
import json, sys
path, c0, c1, tick, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
json.dump({"redis_cpu_us_per_msg": (c1 - c0) / tick / n * 1e6}, open(path, "w"))
PY
  kill "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=
  rm -rf "$rdir" "$work/$name"
}

for round in $(seq "$ROUNDS"); do
  faults "$base_faults"
  run_e2e "embedded-$round" "$N" "$conc"
  rm -rf "$work/embedded-$round"
  if [[ -n "${OLD_PUSHER:-}" ]]; then
    PUSHER_BIN=$OLD_PUSHER run_redis "redis-old-$round"
  fi
  run_redis "redis-$round"
done

python3 - "$OUT" "$ROUNDS" "$N" "${OLD_PUSHER:+old}" <<'PY'
import json, os, re, statistics, sys
out, rounds, n, old = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "old"
load = lambda name: json.load(open(f"{out}/{name}.json"))
emb = [load(f"wxpush-embedded-{r}") for r in range(1, rounds + 1)]
sides = (["redis-old"] if old else []) + ["redis"]
for side in sides:
    red = [load(f"wxpush-{side}-{r}") for r in range(1, rounds + 1)]
    rcpu = [load(f"{side}-{r}-cpu")["redis_cpu_us_per_msg"] for r in range(1, rounds + 1)]
    ratios = [red[r]["rate"] / emb[r]["rate"] for r in range(rounds)]
    print(f"== {side}" + (" (OLD_PUSHER)" if side == "redis-old" else ""))
    for r in range(rounds):
        print(f"round {r + 1}: embedded {emb[r]['rate']:8.0f} msgs/s ({emb[r]['cpu_us_per_msg']:5.1f} µs CPU/msg); "
              f"redis {red[r]['rate']:8.0f} msgs/s ({red[r]['cpu_us_per_msg']:5.1f} µs pusher, {rcpu[r]:5.1f} µs redis CPU/msg); "
              f"ratio {ratios[r]:.2f}x")
    me, mr = statistics.median(e["rate"] for e in emb), statistics.median(r["rate"] for r in red)
    print(f"median: embedded {me:.0f} msgs/s, redis {mr:.0f} msgs/s ({mr / me:.2f}x); "
          f"median of the rounds' ratios {statistics.median(ratios):.2f}x; "
          f"redis CPU {statistics.median(rcpu):.1f} µs/msg, pusher CPU "
          f"{statistics.median(r['cpu_us_per_msg'] for r in red):.1f} µs/msg with redis, "
          f"{statistics.median(e['cpu_us_per_msg'] for e in emb):.1f} µs/msg embedded")
    # Commands per delivered message in the last round (calls of each command / N).
    stats = open(f"{out}/{side}-{rounds}-commandstats.txt").read()
    rows = []
    for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)", stats):
        rows.append((int(m.group(3)), m.group(1), int(m.group(2)), float(m.group(4))))
    rows.sort(reverse=True)
    total = sum(c for _, name, c, _ in rows if name not in ("evalsha", "eval", "config|resetstat"))
    print(f"redis commands per delivered message (round {rounds}; usec includes a script's inner commands; "
          f"{total / n:.1f} commands/msg besides the script calls):")
    for usec, name, calls, per in rows:
        if calls / n >= 0.005:
            print(f"  {name:18s} {calls / n:6.2f}/msg  {usec / n:6.1f} µs/msg  {per:6.2f} µs/call")
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
