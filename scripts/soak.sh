#!/usr/bin/env bash
# The long runs of docs/reliability.md: the token endpoint down for 60 s with 100,000 queued,
# and the memory of a pusher with 1,000,000 queued. Figures are printed; see
# docs/reliability.md for the last ones recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p wxpush-pusher -p wxpush-sandbox --bins
export WXPUSH_SOAK=1
cargo test -p wxpush-tests --test engine_faults -- --include-ignored --test-threads=1 --nocapture \
  token_endpoint_down memory_with_a_large_backlog
