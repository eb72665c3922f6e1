#!/usr/bin/env bash
# The layout's promises, checked on the real build (CI runs this from scripts/test.sh):
# 1. the operator depends on the API crate only: no redb, no pusher, no sandbox in its tree;
# 2. no import cycle between modules and no pusher module using a higher layer
#    (scripts/check-module-cycles.py, after its own self-test);
# 3. the production pusher binary, built as deploy/docker/pusher.Dockerfile builds it (release,
#    without the `demo` feature), holds no sandbox code: no `wxpush_sandbox` symbol or string.
set -euo pipefail
cd "$(dirname "$0")/.."

tree=$(cargo tree --locked -p wxpush-operator -e normal --prefix none)
bad=$(grep -E '^(redb|wxpush-pusher|wxpush-sandbox) ' <<<"$tree" | sort -u || true)
if [ -n "$bad" ]; then
  echo "check-layout: the operator's dependency tree holds: $bad" >&2
  exit 1
fi
echo "check-layout: operator tree: $(sort -u <<<"$tree" | wc -l) crates, no redb/pusher/sandbox"

python3 scripts/check-module-cycles.py --self-test
python3 scripts/check-module-cycles.py

cargo build --release --locked -q -p wxpush-pusher --bin wxpush-pusher
bin=target/release/wxpush-pusher
syms=$( (nm -C "$bin" 2>/dev/null || true; strings "$bin") | grep -c 'wxpush_sandbox' || true)
if [ "$syms" != "0" ]; then
  echo "check-layout: $bin holds $syms sandbox symbols or strings" >&2
  exit 1
fi
echo "check-layout: $bin ($(stat -c %s "$bin") bytes) holds no sandbox symbol"
