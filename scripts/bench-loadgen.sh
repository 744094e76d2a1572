#!/usr/bin/env bash
# llmd-loadgen against one llmd-sim --time-scale 0 (pinned to core 0; the load generators on
# core 1), in one run:
#   1. wrk's raw HTTP rate for the same request (the ceiling of any HTTP client here);
#   2. the highest constant rate llmd-loadgen sustains: achieved/target >= 0.99, send-time lag
#      p99 <= 1 ms, no errors;
#   3. Poisson send-time lag at 2,000 req/s;
#   4. resident memory at 10,000 concurrent streams (sim at time-scale 1, long answers).
#   5. inference-perf at 400-1,600 req/s on the same sim, when its venv exists
#      (scripts/bench-inference-perf.sh; IP_VENV).
#   bash scripts/bench-loadgen.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q -p llmd-sim -p llmd-loadgen
port=18410
sim_pid=""
trap '[ -n "$sim_pid" ] && kill $sim_pid 2>/dev/null' EXIT
start_sim() {
  [ -n "$sim_pid" ] && kill $sim_pid 2>/dev/null && wait $sim_pid 2>/dev/null || true
  taskset -c 0 ./target/release/llmd-sim --host 127.0.0.1 --port $port --dummy-tokenizer --model m "$@" >/dev/null 2>&1 &
  sim_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
}
lg() { taskset -c 1 ./target/release/llmd-loadgen run --endpoint "http://127.0.0.1:$port/v1" --model m \
  --tokenizer bytes --quiet --input-tokens 22 --output-tokens 1 "$@"; }
json() { python3 -c "import json,sys; r=json.load(open('$1')); print($2)"; }
tmp=$(mktemp -d)

start_sim --time-scale 0 --max-num-seqs 4096
echo "== wrk, 64 connections, ${secs}s"
lua=$tmp/post.lua
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' \
  "'{\"model\": \"m\", \"prompt\": \"Hello there, simulator\", \"max_tokens\": 1}'" > "$lua"
raw=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s "$lua" "http://127.0.0.1:$port/v1/completions" | awk '/Requests\/sec/ {print $2}')
echo "wrk raw rate: $raw req/s"

echo "== llmd-loadgen, constant rate, ${secs}s per step"
best=0
strict=0
for rate in 4000 8000 12000 16000 20000 24000 28000 32000 36000 40000; do
  lg --load constant --rate $rate --duration-s "$secs" --output "$tmp/c$rate.json" >/dev/null || true
  line=$(json "$tmp/c$rate.json" "'%.0f %.4f %d %.3f' % (r['achieved_rate'], r['achieved_ratio'], r['overall']['failed'], r['send_lag_ms']['p99'])")
  read -r achieved ratio failed lag <<<"$line"
  echo "target $rate: achieved $achieved ($ratio), failed $failed, send lag p99 $lag ms"
  # Sustained: achieved >= 0.99 x target and no errors; strict: also send lag p99 <= 1 ms.
  if awk -v x="$ratio" 'BEGIN {exit !(x >= 0.99)}' && [ "$failed" = 0 ]; then
    best=$rate
    awk -v l="$lag" 'BEGIN {exit !(l <= 1.0)}' && strict=$rate
  fi
  awk -v x="$ratio" 'BEGIN {exit !(x < 0.9)}' && break
done
ratio_of() { awk -v a="$1" -v b="$raw" 'BEGIN {printf "%.2f", a/b}'; }
echo "highest sustained constant rate: $best req/s = $(ratio_of $best) of wrk's raw rate"
echo "  with send lag p99 <= 1 ms too: ${strict:-0} req/s = $(ratio_of ${strict:-0})"

if [ -x "${IP_VENV:-/tmp/ipvenv}/bin/inference-perf" ]; then
  echo "== inference-perf (same sim), constant rates, ${secs}s each"
  for rate in 400 800 1200 1600; do
    SIM_PORT=$port bash scripts/bench-inference-perf.sh $rate "$secs" | sed 's/ | tool:.*//'
  done
else
  echo "== inference-perf: no venv at \${IP_VENV:-/tmp/ipvenv} (see scripts/bench-inference-perf.sh); skipped"
fi

echo "== Poisson 2000 req/s, $((secs * 2))s: send-time lag"
lg --load poisson --rate 2000 --duration-s $((secs * 2)) --output "$tmp/p.json" >/dev/null
json "$tmp/p.json" "'achieved %.1f (%.4f), lag p50 %.3f ms, p99 %.3f ms, max %.3f ms' % (r['achieved_rate'], r['achieved_ratio'], r['send_lag_ms']['p50'], r['send_lag_ms']['p99'], r['send_lag_ms']['max'])"

echo "== 10,000 concurrent streams (sim time-scale 1, 400 output tokens each), 20s"
start_sim --time-scale 1 --max-num-seqs 20000 --max-num-batched-tokens 1000000 --decode-itl-ms 10 --decode-itl-per-seq-us 0
taskset -c 1 /usr/bin/time -f '%M' -o "$tmp/rss" ./target/release/llmd-loadgen run --endpoint "http://127.0.0.1:$port/v1" \
  --model m --tokenizer bytes --quiet --input-tokens 22 --output-tokens 400 --stream --no-preflight \
  --load concurrency --concurrency 10000 --duration-s 20 --output "$tmp/m.json" >/dev/null
json "$tmp/m.json" "'%d requests, %d ok, %d failed' % (r['overall']['requests'], r['overall']['ok'], r['overall']['failed'])"
echo "max resident: $(( $(cat "$tmp/rss") / 1024 )) MB"
rm -rf "$tmp"
