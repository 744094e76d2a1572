#!/usr/bin/env bash
# The test command of the README: sets up what the tests need (scripts/setup.sh: the first run
# installs Debian packages, the Python and Envoy venvs, the tokenizer files and playwright-core;
# later runs check them in seconds), then formatting, lints, every test of the workspace and
# the operations tests (charts, dashboards, Prometheus, the demo page in Chromium).
#
# Nothing is skipped: with every peer set up, the tests run as strictly as in CI (CI set), where
# a test whose peer is missing fails, saying how to get it, instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "no cargo on PATH: install a Rust toolchain (rustup), then run this again" >&2
  exit 1
fi

echo "== set-up (scripts/setup.sh)"
bash scripts/setup.sh

export PATH="$PWD/.venv/bin:$PATH"
export LLMD_TEST_PYTHON="$PWD/.venv/bin/python"
export CI="${CI:-1}"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests; the crate docs' examples are tests too.
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked
fi

echo "== operations tests (charts, dashboards, Prometheus, the demo page in Chromium)"
.venv/bin/python -m pytest -q tests/ops
