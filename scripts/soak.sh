#!/usr/bin/env bash
# The long runs of docs/reliability.md (a few minutes each; figures are printed and the last
# ones recorded in docs/reliability.md):
# - 20 seeded kill -9s of the pusher under load, then WeChat outages of 10 s and 120 s, with the
#   embedded store and with Redis (tests/tests/soak.rs; WXPUSH_SOAK_SEED replays a run);
# - the token endpoint down for 60 s with 100,000 queued;
# - the memory of a pusher with 1,000,000 queued.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
export WXPUSH_SOAK=1
cargo test -p wxpush-tests --test soak -- --ignored --test-threads=1 --nocapture
cargo test -p wxpush-tests --test engine_faults -- --include-ignored --test-threads=1 --nocapture \
  token_endpoint_down memory_with_a_large_backlog
