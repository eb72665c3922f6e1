#!/usr/bin/env bash
# Fuzzes wxpush's parsers of untrusted input with cargo-fuzz (fuzz/): the message and batch
# parsers, the events XML, AES decoding and the duration parser.
#
#   scripts/fuzz.sh --soak [SECONDS]   run every target for SECONDS each (default 60)
#   scripts/fuzz.sh TARGET [SECONDS]   run one target
#
# Not part of scripts/test.sh: fuzzing is a soak. What it finds is fixed and the input kept under
# fuzz/regressions/<target>/, which tests/tests/fuzz_regressions.rs replays in every test run.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain provide them.
# Builds are debug builds without a sanitizer by default (the code forbids `unsafe`); set
# FUZZ_RELEASE=1 for optimised builds and FUZZ_SANITIZER=address to add ASan.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(message batch events_xml aes duration)
command -v cargo-fuzz >/dev/null 2>&1 || { echo "fuzz: installing cargo-fuzz"; cargo install cargo-fuzz --locked; }

mode=${1:---soak}
secs=${2:-60}
if [ "$mode" = "--soak" ]; then run=("${targets[@]}"); else run=("$mode"); fi

build=(--sanitizer "${FUZZ_SANITIZER:-none}")
[ "${FUZZ_RELEASE:-0}" = 1 ] || build+=(--dev)

export RUSTC_BOOTSTRAP=1
status=0
for t in "${run[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "fuzz: $t for ${secs}s"
  # New inputs go to fuzz/corpus/<t> (not committed); fuzz/regressions/<t> seeds it.
  if ! cargo fuzz run --fuzz-dir fuzz "${build[@]}" "$t" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    echo "fuzz: $t FAILED; the crashing input is under fuzz/artifacts/$t/ — fix it, then copy it to fuzz/regressions/$t/" >&2
    status=1
  fi
done
exit $status
