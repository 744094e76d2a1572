#!/usr/bin/env bash
# The llm-d P/D demo's load script, backed by llmd-loadgen (client-side TTFT and token counts
# included): WORKERS concurrent workers with distinct patterns for MINUTES.
#   scripts/generate-load-pd-concurrent.sh [WORKERS=6] [MINUTES=5]
# Environment: ENDPOINT (default http://localhost:8000/v1), MODEL_NAME (default
# meta-llama/Llama-3.1-8B-Instruct), LLMD_LOADGEN_TOKENIZER (a tokenizer name or directory, or
# `bytes` for `llmd sim --dummy-tokenizer`). Extra flags after the two numbers go to
# `llmd-loadgen pd-concurrent` (see its --help), e.g. --output report.json.
set -euo pipefail
workers=${1:-6}
minutes=${2:-5}
shift $(( $# < 2 ? $# : 2 ))
root="$(cd "$(dirname "$0")/.." && pwd)"
if command -v llmd >/dev/null 2>&1; then
  exec llmd loadgen pd-concurrent "$workers" "$minutes" "$@"
elif [ -x "$root/target/release/llmd-loadgen" ]; then
  exec "$root/target/release/llmd-loadgen" pd-concurrent "$workers" "$minutes" "$@"
else
  exec cargo run --release -q --manifest-path "$root/Cargo.toml" -p llmd-loadgen -- \
    pd-concurrent "$workers" "$minutes" "$@"
fi
