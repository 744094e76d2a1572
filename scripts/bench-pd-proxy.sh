#!/usr/bin/env bash
# llmd-pd-proxy pass-through cost with real processes (decode simulator at --time-scale 0, so
# what remains is the proxy). Baselines in the same run, alternated with the proxied runs.
#   1. Throughput, placed as deployed: the proxy on a core of its own (a sidecar container with
#      its own CPU); the simulator and wrk share the other core in every run.
#   2. Latency of one request at a time: wrk on one core, the simulator and the proxy on the
#      other, so the direct and the proxied path cross cores equally often and the difference
#      is the proxy's own work and hand-offs (on this VM a cross-core wake-up costs tens of µs).
#   bash scripts/bench-pd-proxy.sh [SECONDS]      (needs wrk and taskset)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
cargo build --release -q -p llmd-sim -p llmd-pd-proxy
sim_port=18201 proxy_port=18200
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
start() { # sim core, proxy core
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  taskset -c "$1" ./target/release/llmd-sim --host 127.0.0.1 --port "$sim_port" --time-scale 0 \
    --max-num-seqs 1024 --dummy-tokenizer --model m >/dev/null 2>&1 &
  pids=($!)
  taskset -c "$2" ./target/release/llmd-pd-proxy --host 127.0.0.1 --port "$proxy_port" \
    --metrics-port 18290 --decoder "http://127.0.0.1:$sim_port" --secure-proxy=false >/dev/null 2>&1 &
  pids+=($!)
  for port in $sim_port $proxy_port; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  done
}
lua=$(mktemp --suffix=.lua)
wrk_run() { # port, connections, body, extra wrk flags...
  local port=$1 conns=$2 body=$3; shift 3
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' "$body" > "$lua"
  taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" -s "$lua" "$@" "http://127.0.0.1:$port/v1/completions"
}
small="'{\"model\": \"m\", \"prompt\": \"Hello there, simulator\", \"max_tokens\": 1}'"
stream="'{\"model\": \"m\", \"prompt\": \"Hello there, simulator\", \"max_tokens\": 1, \"stream\": true}'"

start 0 1
echo "== throughput: 64 connections, max_tokens 1 (req/s); sim + wrk on core 0, proxy on core 1"
for round in 1 2; do
  d=$(wrk_run $sim_port 64 "$small" | awk '/Requests\/sec/ {print $2}')
  p=$(wrk_run $proxy_port 64 "$small" | awk '/Requests\/sec/ {print $2}')
  echo "round $round: direct $d, via proxy $p, ratio $(awk -v a="$p" -v b="$d" 'BEGIN {printf "%.2f", a/b}')"
done

start 1 1
echo "== latency p50, 1 connection; wrk on core 0, sim + proxy on core 1"
for round in 1 2; do
  d=$(wrk_run $sim_port 1 "$stream" --latency | awk '$1 == "50%" {print $2}')
  p=$(wrk_run $proxy_port 1 "$stream" --latency | awk '$1 == "50%" {print $2}')
  echo "round $round: streaming, max_tokens 1 (whole response): direct $d, via proxy $p"
  d=$(wrk_run $sim_port 1 "$small" --latency | awk '$1 == "50%" {print $2}')
  p=$(wrk_run $proxy_port 1 "$small" --latency | awk '$1 == "50%" {print $2}')
  echo "round $round: non-streaming, max_tokens 1: direct $d, via proxy $p"
done
rm -f "$lua"
