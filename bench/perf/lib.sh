# Shared by bench/perf/run.sh and bench/perf/ab.sh (sourced): builds the release binaries,
# starts one sandbox answering in LATENCY, and defines faults, start_pusher, stop_pusher,
# run_loop and run_e2e, with the bench channel's APPID, SECRET and TOKEN. Expects LATENCY, TASKS
# and OUT to be set.
# PUSHER_BIN picks the pusher binary (default: the one just built).

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
  [[ -n "${REDIS_PID:-}" ]] && kill "$REDIS_PID" 2>/dev/null || true
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

# start_pusher NAME CONCURRENCY_JSON [API_BASE]; QUEUE_JSON replaces the embedded store.
start_pusher() {
  local name=$1 conc=$2 api=${3:-$SB} port dir
  port=$(free_port)
  dir="$work/$name"
  mkdir -p "$dir"
  local queue=${QUEUE_JSON:-"{\"embedded\": {\"path\": \"$dir/queue\"}}"}
  cat >"$dir/pusher.yaml" <<EOF
{"listen": "127.0.0.1:$port", "channel": "bench", "apiBaseUrl": "$api",
 "credentials": {"appId": "$APPID", "appSecret": "$SECRET"},
 "auth": {"token": "$TOKEN"},
 "queue": $queue,
 "concurrency": $conc,
 "rateLimit": {"perSecond": 1000000, "burst": 1000000, "dailyQuota": 0},
 "shutdown": {"drainTimeout": "1s"}}
EOF
  RUST_LOG=${RUST_LOG:-warn} "${PUSHER_BIN:-$BIN/wxpush-pusher}" serve --config "$dir/pusher.yaml" \
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

run_loop() { # NAME N [TASKS]
  local tasks=${3:-$TASKS}
  echo "-- loop: $1 ($2 messages, $tasks tasks)" >&2
  "$BIN/wxpush-bench" loop --sandbox "$SB" --n "$2" --tasks "$tasks" --appid "$APPID" \
    --secret "$SECRET" --prefix "loop-$1-" >"$OUT/loop-$1.json"
}

run_e2e() { # NAME N CONCURRENCY_JSON
  echo "-- wxpush: $1 ($2 messages, concurrency $3)" >&2
  start_pusher "$1" "$3"
  "$BIN/wxpush-bench" e2e --pusher "$PUSHER" --token "$TOKEN" --sandbox "$SB" \
    --pid "$PUSHER_PID" --n "$2" --prefix "wx-$1-" >"$OUT/wxpush-$1.json"
  stop_pusher
}

