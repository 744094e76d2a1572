#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (not part of CI). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); the machines have only a stable toolchain, so nightly-only
# flags are enabled with RUSTC_BOOTSTRAP=1.
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  echo "== $target ($secs s)"
  mkdir -p "fuzz/corpus/$target"
  cargo fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 \
    | grep -E '^(#[0-9]+.*(DONE|pulse)|Done|==[0-9]+==|SUMMARY|ERROR|artifact)' | tail -n 3
done
