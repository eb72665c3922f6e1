#!/usr/bin/env bash
# The whole test suite, as CI runs it: install what is missing, check formatting and lints,
# build every binary, run every test (unit, CRD/examples, end-to-end against real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
# As in CI, a test whose capability is missing (root, mount, a tool) fails instead of skipping
# (tests/src/capability.rs); setup.sh fails likewise on a tool it cannot provide.
export WXPUSH_STRICT=1
scripts/setup.sh
export WXPUSH_PYTHON="$PWD/.venv/bin/python"
# Tools installed into the venv (kubectl where the machine has none) come after the system ones.
export PATH="$PATH:$PWD/.venv/bin"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every dependency is used (scripts/setup.sh builds the pinned cargo-machete), and the docs build
# with no broken link.
"${XDG_CACHE_HOME:-$HOME/.cache}/wxpush/bin/cargo-machete"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked
# The end-to-end tests spawn the pusher, sandbox and operator binaries; `cargo test` builds
# only the bins of packages with integration tests of their own, so build them all first.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast
# The control plane's own Go code: the metrics adapter's rules, PromQL and /proc sampling.
# Without Go this fails (the test command is strict, as CI is).
(cd tools/cluster/adapter && GOFLAGS="-trimpath -mod=readonly -buildvcs=false" go test ./...)
# The README's command blocks, copied from README.md as written (its first command builds and
# runs the release pusher's demo); blocks that need a cluster are only listed.
scripts/readme-commands.py
scripts/check-layout.sh
