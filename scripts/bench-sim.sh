#!/usr/bin/env bash
# llmd-sim throughput with --time-scale 0: the simulator pinned to core 0, wrk on core 1.
# Baseline in the same run: GET /health on the same server (HTTP overhead alone).
#   bash scripts/bench-sim.sh [SECONDS]      (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
cargo build --release -q -p llmd-sim
port=18123
tok_flags=(--dummy-tokenizer)
if [ -d .cache/hf/hub/models--meta-llama--Llama-3.1-8B-Instruct ]; then
  export HF_HUB_CACHE=$PWD/.cache/hf/hub
  tok_flags=()
fi
taskset -c 0 ./target/release/llmd-sim --host 127.0.0.1 --port "$port" --time-scale 0 --max-num-seqs 1024 \
  --block-size 16 "${tok_flags[@]}" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
lua=$(mktemp --suffix=.lua)
run() { # title, body (empty: GET /health)
  echo "== $1"
  if [ -z "$2" ]; then
    taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port/health" | grep -E 'Requests/sec|Latency'
  else
    printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' "$2" > "$lua"
    taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s "$lua" "http://127.0.0.1:$port/v1/completions" | grep -E 'Requests/sec|Latency|Non-2xx'
  fi
}
run "baseline: GET /health" ""
run "POST /v1/completions, small prompt, max_tokens 1" "'{\"prompt\": \"Hello there, simulator\", \"max_tokens\": 1}'"
run "POST /v1/completions, stream, max_tokens 64" "'{\"prompt\": \"Hello there, simulator\", \"max_tokens\": 64, \"stream\": true}'"
rm -f "$lua"
