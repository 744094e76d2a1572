#!/usr/bin/env bash
# The test command of the README: formatting, lints, and every test of the workspace.
# Interop tests find their Python peers in .venv (scripts/setup-python.sh), Envoy in .venv-envoy
# (scripts/setup-envoy.sh) and promtool on PATH (scripts/setup-system.sh); .ci/run sets them up
# first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then
  export PATH="$PWD/.venv/bin:$PATH"
  export LLMD_TEST_PYTHON="$PWD/.venv/bin/python"
fi

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

echo "== operations tests (charts, dashboards, Prometheus)"
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m pytest -q tests/ops
elif [ -n "${CI:-}" ]; then
  echo "CI needs .venv (scripts/setup-python.sh) for tests/ops" >&2
  exit 1
else
  echo "skipped: no .venv (bash scripts/setup-python.sh)"
fi
