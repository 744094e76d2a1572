#!/usr/bin/env bash
# llmd-epp behind a real Envoy against the ext_proc floor: the same Envoy, backend and load in
# front of (A) a no-op ext_proc server (crates/llmd-epp/examples/noop_ext_proc.rs: routes every
# request to the backend and does nothing else), (B) the EPP with the round-robin config and
# (C) the EPP with its default config (precise prefix cache + queue + KV usage, the real
# Llama-3.1 tokenizer). Configurations alternate (A B C A B C ...) so the machine's other load
# hits all alike; ratios are to A's rounds of the same run.
#
# Envoy: docs/envoy/envoy-ext-proc.yaml without tracing, TLS and health checks, with a BUFFERED
# request body (request headers, then the whole body in one message) and the response headers
# and (buffered) response body sent too, as GIE's metrics need; --concurrency 1.
# Backend: the simulator at --time-scale 0 (answers at once). Load: wrk, 32 connections, POST
# /v1/completions with a ~1 KB body whose prompt is a shared ~950-byte text then a question
# numbered per request (so the precise scorer tokenizes a new tail each time).
# Placement: wrk on core 0; Envoy, the ext_proc server and the simulator share core 1.
# CPU: the ext_proc server's utime+stime (/proc/PID/stat) over the measured window divided by
# the requests wrk completed in it; Envoy's the same way.
#   bash scripts/bench-epp-floor.sh [SECONDS] [ROUNDS]     (needs wrk, taskset, Envoy:
#   scripts/setup-envoy.sh, the tokenizer: scripts/fetch-tokenizers.sh)
#   BEFORE_BIN=/tmp/llmd-epp.old bash scripts/bench-epp-floor.sh    also runs that llmd-epp binary
#   (round-robin and precise) in the same rotation: before/after figures of one run
#   PERF_DIR=/tmp/p bash scripts/bench-epp-floor.sh    also `perf record -g` each measured run
#   of the ext_proc server into /tmp/p/<config>.<round>.data (the profile costs CPU: the
#   figures of such a run are not the benchmark's)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
model=meta-llama/Llama-3.1-8B-Instruct
envoy=${LLMD_TEST_ENVOY:-.venv-envoy/bin/envoy}
for tool in wrk taskset "$envoy"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (scripts/setup-system.sh, scripts/setup-envoy.sh)" >&2; exit 1; }
done
# The EPP finds the tokenizer in the HF cache layout, as the rest of the project does.
export HF_HOME=${HF_HOME:-$PWD/.cache/hf}
[ -e "$HF_HOME/hub/models--${model//\//--}" ] || { echo "no $model tokenizer under $HF_HOME (bash scripts/fetch-tokenizers.sh)" >&2; exit 1; }

cargo build --release -q -p llmd-sim -p llmd-epp
cargo build --release -q -p llmd-epp --example noop_ext_proc
bin=./target/release
sim_port=18301 ext_port=18302 listen=18300 admin=18309
work=$(mktemp -d)
sim_pid='' envoy_pid='' ext_pid=''
cleanup() {
  for p in $ext_pid $envoy_pid $sim_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

taskset -c 1 $bin/llmd-sim --host 127.0.0.1 --port $sim_port --time-scale 0 --max-num-seqs 1024 \
  --dummy-tokenizer --model "$model" >"$work/sim.log" 2>&1 &
sim_pid=$!
printf 'endpoints:\n  - {address: 127.0.0.1, port: %s, model: %s}\n' $sim_port "$model" >"$work/endpoints.yaml"

cat >"$work/envoy.yaml" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
    - name: http
      address: {socket_address: {address: 127.0.0.1, port_value: $listen}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: gateway
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {prefix: "/"}
                          route: {cluster: original_destination, timeout: 600s}
                http_filters:
                  - name: envoy.filters.http.ext_proc
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
                      grpc_service:
                        envoy_grpc: {cluster_name: epp}
                        timeout: 10s
                      failure_mode_allow: false
                      message_timeout: 10s
                      processing_mode:
                        request_header_mode: SEND
                        response_header_mode: SEND
                        request_body_mode: BUFFERED
                        response_body_mode: BUFFERED
                        request_trailer_mode: SKIP
                        response_trailer_mode: SKIP
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: epp
      type: STATIC
      connect_timeout: 2s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: epp
        endpoints:
          - lb_endpoints:
              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $ext_port}}}
    - name: original_destination
      type: ORIGINAL_DST
      lb_policy: CLUSTER_PROVIDED
      connect_timeout: 2s
      original_dst_lb_config:
        use_http_header: true
        http_header_name: x-gateway-destination-endpoint
EOF
taskset -c 1 "$envoy" -c "$work/envoy.yaml" --disable-hot-restart --log-level error \
  --concurrency 1 >"$work/envoy.log" 2>&1 &
envoy_pid=$!

# ~1 KB body: a shared ~950-byte prompt text, then a question numbered per request.
text=$(printf 'The quick brown fox jumps over the lazy dog while the committee reviews the quarterly report on inference latency. %.0s' $(seq 8))
cat >"$work/body.lua" <<EOF
local n = 0
local pre = '{"model": "$model", "max_tokens": 1, "prompt": "$text Question '
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/completions", nil, pre .. n .. '?"}')
end
EOF

start_ext() { # noop | rr | precise | rr-before | precise-before
  [ -n "$ext_pid" ] && { kill "$ext_pid" 2>/dev/null || true; wait "$ext_pid" 2>/dev/null || true; }
  local epp_bin=$bin/llmd-epp
  case $1 in *-before) epp_bin=$BEFORE_BIN ;; esac
  local epp=("$epp_bin" --host 127.0.0.1 --grpc-port $ext_port --grpc-health-port 18303
    --metrics-port 18304 --endpoints-file "$work/endpoints.yaml" --secure-serving=false)
  local cmd
  case $1 in
    noop) cmd=($bin/examples/noop_ext_proc --port $ext_port --destination 127.0.0.1:$sim_port) ;;
    rr | rr-before) cmd=("${epp[@]}" --config-text "$(printf 'plugins:\n  - type: round-robin-picker\nschedulingProfiles:\n  - name: default\n    plugins:\n      - {pluginRef: round-robin-picker}\n')") ;;
    precise | precise-before) cmd=("${epp[@]}") ;;
  esac
  taskset -c 1 "${cmd[@]}" >"$work/$1.log" 2>&1 &
  ext_pid=$!
  # Ready when a request through Envoy is routed and answered (the EPP has scraped the pod).
  for _ in $(seq 300); do
    curl -sf -o /dev/null -H 'Content-Type: application/json' \
      -d "{\"model\": \"$model\", \"prompt\": \"hi\", \"max_tokens\": 1}" \
      "http://127.0.0.1:$listen/v1/completions" && return 0
    sleep 0.1
  done
  echo "$1 did not get ready:" >&2; tail -5 "$work/$1.log" >&2; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

wrk_run() { # seconds -> prints "requests non2xx"
  taskset -c 0 wrk -t1 -c32 -d"$1s" -s "$work/body.lua" "http://127.0.0.1:$listen" >"$work/wrk.out"
  awk '/requests in/ {r = $1} /Non-2xx/ {e = $NF} END {print r, e + 0}' "$work/wrk.out"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk on core 0; Envoy, the ext_proc server and the simulator on core 1; ${secs}s per run, $rounds rounds"
declare -A rps cpu envoy_cpu
configs=(noop rr precise)
[ -n "${BEFORE_BIN:-}" ] && configs+=(rr-before precise-before)
for round in $(seq "$rounds"); do
  for c in "${configs[@]}"; do
    start_ext "$c"
    wrk_run 2 >/dev/null # warm-up: connections, tokenizer, prompt cache
    e0=$(cpu_ticks "$ext_pid") v0=$(cpu_ticks "$envoy_pid")
    if [ -n "${PERF_DIR:-}" ]; then # profile the ext_proc server during the measured run
      mkdir -p "$PERF_DIR"
      perf record -q ${PERF_ARGS:--g} -p "$ext_pid" -o "$PERF_DIR/$c.$round.data" -- sleep "$secs" 2>/dev/null &
      perf_pid=$!
    fi
    read -r reqs errors < <(wrk_run "$secs")
    [ -n "${PERF_DIR:-}" ] && wait "$perf_pid"
    e1=$(cpu_ticks "$ext_pid") v1=$(cpu_ticks "$envoy_pid")
    [ "$errors" -eq 0 ] || { echo "$c: $errors non-2xx responses" >&2; tail -5 "$work/$c.log" >&2; exit 1; }
    pick=''
    if [ "$c" != noop ]; then
      curl -sf http://127.0.0.1:18304/metrics >"$work/metrics.txt"
      # The mean pick (scheduler end to end), warm-up included.
      pick=$(awk '/^llm_d_epp_scheduler_e2e_duration_seconds_sum/ {s = $2} /^llm_d_epp_scheduler_e2e_duration_seconds_count/ {n = $2} END {if (n) printf ", mean pick %.1f us", s / n * 1e6}' "$work/metrics.txt")
    fi
    if [[ $c == precise* ]]; then # the precise path ran: every request looked the index up
      looked=$(awk '/^llm_d_epp_kv_cache_index_lookup_latency_seconds_count/ {print $2}' "$work/metrics.txt")
      [ "${looked:-0}" -ge "$reqs" ] || { echo "$c: ${looked:-no} index lookups for $reqs requests" >&2; exit 1; }
    fi
    r=$(awk -v n="$reqs" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
    u=$(awk -v d=$((e1 - e0)) -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
    v=$(awk -v d=$((v1 - v0)) -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
    echo "round $round $c: $r req/s, ext_proc server $u CPU-us/request, Envoy $v CPU-us/request$pick"
    rps[$c]+="$r " cpu[$c]+="$u " envoy_cpu[$c]+="$v "
  done
done
[ -n "$ext_pid" ] && { kill "$ext_pid" 2>/dev/null || true; wait "$ext_pid" 2>/dev/null || true; ext_pid=''; }

mean() { awk '{s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.1f", s / NF}' <<<"$1"; }
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '%-28s %9s %8s %13s %10s %12s\n' config req/s ratio ext_proc_us/req delta_us envoy_us/req
base_r=$(mean "${rps[noop]}") base_c=$(mean "${cpu[noop]}")
for c in "${configs[@]}"; do
  r=$(mean "${rps[$c]}") u=$(mean "${cpu[$c]}") v=$(mean "${envoy_cpu[$c]}")
  name=$c
  case $c in
    noop) name="no-op ext_proc (floor)" ;; rr) name="llmd-epp round-robin" ;; precise) name="llmd-epp precise (default)" ;;
    rr-before) name="BEFORE_BIN round-robin" ;; precise-before) name="BEFORE_BIN precise" ;;
  esac
  printf '%-28s %9.0f %7.2fx %13.1f %+10.1f %12.1f\n' "$name" "$r" \
    "$(awk -v a="$r" -v b="$base_r" 'BEGIN {print a / b}')" "$u" \
    "$(awk -v a="$u" -v b="$base_c" 'BEGIN {print a - b}')" "$v"
done
echo "(means over $rounds rounds; per-round figures above)"
