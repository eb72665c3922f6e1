#!/usr/bin/env bash
# The layout's promises, checked on the real build (CI runs this from scripts/test.sh):
# 1. the operator depends on the API crate only: no redb, no pusher, no sandbox in its tree;
# 2. no import cycle between modules and no pusher module using a higher layer
#    (scripts/check-module-cycles.py, after its own self-test);
#    no function over 120 lines and no unexplained pusher file over 600 lines
#    (scripts/check-sizes.py, after its own self-test);
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
python3 scripts/check-sizes.py --self-test
python3 scripts/check-sizes.py

# Reading the binary needs binutils (scripts/setup.sh installs it): without nm or strings the
# check fails rather than count nothing.
for tool in nm strings; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check-layout: $tool is missing (apt-get install binutils; scripts/setup.sh does)" >&2
    exit 1
  fi
done
cargo build --release --locked -q -p wxpush-pusher --bin wxpush-pusher
bin=target/release/wxpush-pusher
listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
nm -C "$bin" >"$listing"
strings "$bin" >>"$listing"
# The reading must see the pusher's own code, or a count of 0 proves nothing.
own=$(grep -c 'wxpush_pusher' "$listing" || true)
if [ "$own" = "0" ]; then
  echo "check-layout: nm and strings found no wxpush_pusher symbol in $bin: the check cannot see" >&2
  exit 1
fi
syms=$(grep -c 'wxpush_sandbox' "$listing" || true)
if [ "$syms" != "0" ]; then
  echo "check-layout: $bin holds $syms sandbox symbols or strings" >&2
  exit 1
fi
echo "check-layout: $bin ($(stat -c %s "$bin") bytes, $own wxpush_pusher symbols or strings) holds no sandbox symbol"
