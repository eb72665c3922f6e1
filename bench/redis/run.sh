#!/usr/bin/env bash
# The Redis scale-out benchmark: delivered messages/s with 1, 2 and 3 pushers sharing one
# Redis, next to one pusher on the embedded store, all against one wxpush-sandbox; and Redis's
# CPU time per message (user + system ticks of the redis-server process, /proc/<pid>/stat).
#
#   bench/redis/run.sh                          # defaults below, release build
#   COUNT=50000 PROFILE=debug bench/redis/run.sh
#
# For each setup: a fresh redis-server (AOF on, appendfsync everysec, as in production) and
# fresh pushers; the sandbox's counters are reset; PRODUCERS curl processes post COUNT messages
# in batches of BATCH, spread over the pushers; the clock runs from the first request to the
# moment the sandbox has counted COUNT unique deliveries. Nothing is asserted.
set -euo pipefail
cd "$(dirname "$0")/../.."

COUNT=${COUNT:-20000}
BATCH=${BATCH:-100}
PRODUCERS=${PRODUCERS:-8}
IN_FLIGHT=${IN_FLIGHT:-64}
PROFILE=${PROFILE:-release}
SETUPS=${SETUPS:-"embedded:1 redis:1 redis:2 redis:3"}
APPID=wxbench000000000
SECRET=bench-secret
TOKEN=bench-token-0123456789abcdef

command -v redis-server >/dev/null || { echo "redis-server is needed (scripts/setup.sh)" >&2; exit 1; }
if [[ "$PROFILE" == release ]]; then
  cargo build --release -p wxpush-pusher -p wxpush-sandbox --bins >&2
else
  cargo build -p wxpush-pusher -p wxpush-sandbox --bins >&2
fi
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"
TICK=$(getconf CLK_TCK)

work=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$BIN/wxpush-sandbox" --listen 127.0.0.1:0 --appid "$APPID" --secret "$SECRET" \
  --daily-quota unlimited >"$work/sandbox.out" 2>"$work/sandbox.err" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$work/sandbox.out" ]] && break; sleep 0.05; done
SB=$(sed -n 's/^wxpush-sandbox listening on //p' "$work/sandbox.out" | head -1)
[[ -n "$SB" ]] || { echo "the sandbox did not start" >&2; cat "$work/sandbox.err" >&2; exit 1; }

# One batch body, posted COUNT/BATCH times (ids, and so client_msg_ids, differ per message).
python3 - "$BATCH" >"$work/batch.json" <<'PY'
import json, sys
n = int(sys.argv[1])
msgs = [{"touser": f"o-bench-{i}", "template_id": "TPL", "data": {"keyword1": {"value": "Shipped"}}} for i in range(n)]
print(json.dumps({"messages": msgs}))
PY

delivered() { curl -sf "$SB/__stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["delivered_unique"])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_pusher() { # dir queue-json; writes dir/base and dir/pid
  local dir=$1 queue=$2
  cat >"$dir/pusher.yaml" <<YAML
listen: 127.0.0.1:0
channel: bench
apiBaseUrl: $SB
credentials: {appId: $APPID, appSecret: $SECRET}
auth: {token: $TOKEN}
queue: $queue
concurrency: {maxInFlight: $IN_FLIGHT}
rateLimit: {perSecond: 1000000, burst: 1000000, dailyQuota: 0}
YAML
  RUST_LOG=${RUST_LOG:-warn} "$BIN/wxpush-pusher" serve --config "$dir/pusher.yaml" >"$dir/out" 2>"$dir/err" &
  PIDS+=($!)
  echo $! >"$dir/pid"
  for _ in $(seq 200); do [[ -s "$dir/out" ]] && break; sleep 0.05; done
  local base
  base=$(sed -n 's/^wxpush-pusher listening on //p' "$dir/out" | head -1)
  [[ -n "$base" ]] || { echo "a pusher did not start:" >&2; cat "$dir/err" >&2; exit 1; }
  for _ in $(seq 200); do curl -sf "$base/readyz" >/dev/null && break; sleep 0.05; done
  echo "$base" >"$dir/base"
}

declare -a RESULTS
for setup in $SETUPS; do
  kind=${setup%%:*}; pods=${setup##*:}
  run="$work/$kind-$pods"; mkdir -p "$run"
  RPID=""
  if [[ "$kind" == redis ]]; then
    port=$(free_port)
    mkdir -p "$run/redis"
    redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
      --save '' --dir "$run/redis" >"$run/redis.log" 2>&1 &
    RPID=$!; PIDS+=($RPID)
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
    queue="{redis: {url: \"redis://127.0.0.1:$port\"}}"
  fi
  bases=()
  for i in $(seq "$pods"); do
    mkdir -p "$run/p$i"
    [[ "$kind" == embedded ]] && queue="{embedded: {path: \"$run/p$i/queue\"}}"
    start_pusher "$run/p$i" "$queue"
    bases+=("$(cat "$run/p$i/base")")
  done
  curl -sf -X POST "$SB/__reset" >/dev/null
  requests=$((COUNT / BATCH))
  cpu0=0; [[ -n "$RPID" ]] && cpu0=$(cpu_ticks "$RPID")
  t0=$(date +%s.%N)
  for r in $(seq 0 $((requests - 1))); do echo "${bases[$((r % pods))]}"; done |
    xargs -P "$PRODUCERS" -I{} curl -sf -o /dev/null -X POST "{}/v1/messages/batch" \
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' --data-binary "@$work/batch.json"
  total=$((requests * BATCH))
  while (( $(delivered) < total )); do sleep 0.05; done
  t1=$(date +%s.%N)
  cpu="-"
  if [[ -n "$RPID" ]]; then
    cpu1=$(cpu_ticks "$RPID")
    cpu=$(python3 -c "print(f'{($cpu1-$cpu0)/$TICK/$total*1e6:.1f}')")
  fi
  rate=$(python3 -c "print(f'{$total/($t1-$t0):.0f}')")
  RESULTS+=("$(printf '%-9s %4s pods %8s msgs/s   redis CPU %6s µs/msg' "$kind" "$pods" "$rate" "$cpu")")
  echo "${RESULTS[-1]}" >&2
  # Stop this setup's pushers and redis before the next one.
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:1}"; do wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[0]}")
done

echo
echo "== $COUNT messages (batches of $BATCH, $PRODUCERS producers, maxInFlight $IN_FLIGHT, $PROFILE build) =="
printf '%s\n' "${RESULTS[@]}"
echo "machine: $(nproc) cores, $(uname -sr); redis $(redis-server --version | awk '{print $3}')"
