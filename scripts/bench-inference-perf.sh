#!/usr/bin/env bash
# The yardstick of docs/benchmarks.md (llmd-loadgen): inference-perf (kubernetes-sigs, PyPI,
# Python >= 3.12) at one constant RATE for SECONDS, pinned to core 1, against an llmd-sim
# already listening on 127.0.0.1:18400 (start it pinned to core 0:
#   taskset -c 0 target/release/llmd-sim --host 127.0.0.1 --port 18400 --time-scale 0 \
#     --dummy-tokenizer --model m --max-num-seqs 4096 &).
# Prints one line: what it sent, what succeeded, and how many finished inside the stage's
# window (inference-perf never cuts a stage short; an overloaded run just stretches out).
#   IP_VENV=/path/to/venv bash scripts/bench-inference-perf.sh RATE SECONDS
# Setup once: python3.12 -m venv V && V/bin/pip install inference-perf   (about 790 MB)
set -euo pipefail
RATE=${1:?rate}; SECS=${2:?seconds}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV=${IP_VENV:-/tmp/ipvenv}
BASE=$(mktemp -d); OUT=$BASE/out-$RATE; CFG=$BASE/cfg-$RATE.yaml
TOK=$(ls -d "$ROOT"/.cache/hf/hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots/*/ | head -1)
WORKERS=${WORKERS:-2}; CONC=${CONC:-2000}
rm -rf "$OUT"; mkdir -p "$OUT"
cat > "$CFG" <<YAML
api: {type: completion, streaming: false}
data:
  type: random
  input_distribution:  {min: 20, max: 20, mean: 20, std_dev: 0, total_count: 2000}
  output_distribution: {min: 1, max: 2, mean: 1.5, std_dev: 0.5, total_count: 2000}
load:
  type: constant
  stages: [{rate: $RATE, duration: $SECS}]
  num_workers: $WORKERS
  worker_max_concurrency: $CONC
  stage_teardown_grace_seconds: 30
server: {type: vllm, model_name: m, base_url: "http://127.0.0.1:${SIM_PORT:-18400}", ignore_eos: true}
tokenizer: {pretrained_model_name_or_path: "$TOK"}
report:
  request_lifecycle:
    summary: true
    per_stage: true
    per_request: true
    per_request_fields: {request: false, response: false, info: false, response_chunks: false, computed_metrics: false}
  prometheus: {summary: false, per_stage: false}
storage: {local_storage: {path: "$OUT"}}
YAML
export HF_HUB_OFFLINE=1 HF_HUB_CACHE="$ROOT/.cache/hf/hub" TRANSFORMERS_OFFLINE=1
T0=$(date +%s.%N)
taskset -c 1 "$VENV/bin/inference-perf" --config_file "$CFG" > "$OUT/stdout.log" 2>&1 || echo "inference-perf exit $?" >&2
T1=$(date +%s.%N)
"$VENV/bin/python" - "$OUT" "$RATE" "$SECS" "$T0" "$T1" <<'PY'
import json, sys, os, re, time, datetime as dt
out, rate, secs, t0, t1 = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
st = json.load(open(os.path.join(out, "stage_0_lifecycle_metrics.json")))
ls = st["load_summary"]
sent, ok, failed = ls["count"], st["successes"]["count"], st["failures"]["count"]
# startup = process launch -> "Stage 0 - run started" log line; the tool then schedules the first
# request at (that instant + 1 s) and the last at exactly (that instant + 1 s + SECONDS).
log_start = None
for line in open(os.path.join(out, "stdout.log")):
    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Stage 0 - run started", line)
    if m:
        log_start = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(); break
startup = log_start - t0
# per-request start/end are time.perf_counter() (CLOCK_MONOTONIC, shared across processes): convert the anchor
mono_off = time.time() - time.perf_counter()
T0 = log_start + 1.0 - mono_off           # nominal schedule start (monotonic clock)
TOL = 0.1                                 # slack for ms log resolution + last request's latency
win_end = T0 + secs + TOL
pr = json.load(open(os.path.join(out, "per_request_lifecycle_metrics.json")))
first_lag = min(r["start_time"] for r in pr) - T0
ok_in = sum(1 for r in pr if r["error"] is None and r["end_time"] <= win_end)
sent_in = sum(1 for r in pr if r["start_time"] <= win_end)
achieved = ok_in / secs
verdict = "PASS" if (failed == 0 and ok_in >= 0.99 * rate * secs) else "FAIL"
print(f"RATE {rate:g} sent {sent} ok {ok} failed {failed} achieved_rps {achieved:.2f} wall_s {t1-t0:.1f}"
      f" | in_window sent {sent_in} ok {ok_in} of {int(rate*secs)} {verdict}"
      f" | tool: achieved_rate {ls['achieved_rate']:.2f} send_duration {ls['send_duration']:.2f}"
      f" sched_delay_max {ls['schedule_delay']['max']:.3f} benchmark_time {st['benchmark_time_seconds']:.2f}"
      f" first_send_after_T0 {first_lag:.3f} startup_s {startup:.1f}")
PY
