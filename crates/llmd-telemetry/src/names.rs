//! Every metric, span and span-attribute name of the project, written down once: the telemetry contract (`docs/metrics.md` is generated from it).
//!
//! These names are wire-visible: Grafana dashboards, alerts and other llm-d components query them.
//! Call sites use these constants (`names::pd_proxy::TRUE_TTFT.name`), never a string literal,
//! and `install_prometheus` takes the bucket layout and help text from here.
//!
//! Units are in the name (`_seconds`, `_milliseconds`, `_total` for counters), as Prometheus
//! expects; the exporter adds no suffix of its own.

/// What kind of Prometheus series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter; the name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative histogram with the buckets of its [`MetricDef`].
    Histogram,
}

/// One metric of the telemetry contract: its exposed name, kind, help text, label names and,
/// for histograms, the bucket upper bounds (the exporter adds `+Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    /// Exposed name, exactly as it appears on `/metrics`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// `# HELP` text.
    pub help: &'static str,
    /// Label names this metric is recorded with (documentation and tests; not enforced).
    pub labels: &'static [&'static str],
    /// Histogram bucket upper bounds, ascending; empty for counters and gauges.
    pub buckets: &'static [f64],
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Counter,
        help,
        labels,
        buckets: &[],
    }
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Gauge,
        help,
        labels,
        buckets: &[],
    }
}

const fn histogram(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Histogram,
        help,
        labels,
        buckets,
    }
}

/// Label names shared by several metrics.
pub mod labels {
    /// Model named in the request (`model` field).
    pub const MODEL_NAME: &str = "model_name";
    /// Model the request was sent to after any rewrite.
    pub const TARGET_MODEL_NAME: &str = "target_model_name";
    /// Error code of a failed request (HTTP status as text, or a reason).
    pub const ERROR_CODE: &str = "error_code";
    /// InferencePool name.
    pub const POOL_NAME: &str = "name";
    /// `decode-only` or `prefill-decode`.
    pub const DECISION_TYPE: &str = "decision_type";
    /// P/D connector (`nixlv2`, `lmcache`, `sglang`).
    pub const CONNECTOR: &str = "connector";
    /// Outcome of a proxied request (`success`, `error`, `cancelled`, `passthrough`).
    pub const OUTCOME: &str = "outcome";
    /// Where an error came from (`client`, `prefill`, `decode`, `proxy`).
    pub const STAGE: &str = "stage";
    /// Reason for a skipped or failed item.
    pub const REASON: &str = "reason";
    /// Pod identity as the index knows it.
    pub const POD: &str = "pod";
    /// llm-d's name for the same pod identity on its KV-event series.
    pub const POD_IDENTIFIER: &str = "pod_identifier";
    /// llm-d's endpoint label of the in-flight gauges (`host:port` here).
    pub const ENDPOINT_NAME: &str = "endpoint_name";
    /// llm-d's producer label of the in-flight gauges.
    pub const PRODUCER_NAME: &str = "producer_name";
    /// The request's fairness id (`x-llm-d-inference-fairness-id`, else `default-flow`).
    pub const FAIRNESS_ID: &str = "fairness_id";
    /// The request's InferenceObjective priority (`"0"` when it names none).
    pub const PRIORITY: &str = "priority";
    /// `"true"` for a streamed (SSE) response.
    pub const STREAMING: &str = "streaming";
    /// A plugin instance's name.
    pub const PLUGIN_NAME: &str = "plugin_name";
    /// A plugin's llm-d type.
    pub const PLUGIN_TYPE: &str = "plugin_type";
    /// Where a plugin ran (`Filter`, `Scorer`, `Picker`, `ProfileHandler`, `PreRequest`).
    pub const EXTENSION_POINT: &str = "extension_point";
    /// Build information: the source revision.
    pub const COMMIT: &str = "commit";
    /// Build information: the version.
    pub const BUILD_REF: &str = "build_ref";
    /// Operation that failed.
    pub const OPERATION: &str = "operation";
    /// GIE's and llm-d's InferencePool label of the flow-control metrics.
    pub const INFERENCE_POOL: &str = "inference_pool";
    /// vLLM's DP engine index (`"0"`..).
    pub const ENGINE: &str = "engine";
    /// vLLM finish reason (`stop`, `length`, `abort`, `error`).
    pub const FINISHED_REASON: &str = "finished_reason";
    /// HTTP status code of a response, as text (`200`, `503`).
    pub const CODE: &str = "code";
    /// A Kubernetes resource (plural, as in the API path: `inferencepools`, `pods`).
    pub const RESOURCE: &str = "resource";
}

use labels::*;

/// Metrics of the endpoint picker (`llmd-epp`), including the GIE/llm-d names dashboards use.
pub mod epp {
    use super::*;

    /// Latency buckets (seconds) for a scheduling decision: 10 µs to 1 s.
    pub const DECISION_BUCKETS: &[f64] = &[
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    /// Block-count buckets for matched prefix blocks.
    pub const MATCHED_BLOCK_BUCKETS: &[f64] = &[
        0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
    ];
    /// GIE's request-latency buckets (seconds).
    pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0,
        1200.0, 1800.0, 2700.0, 3600.0,
    ];
    /// GIE's scheduler end-to-end buckets (seconds).
    pub const SCHEDULER_E2E_BUCKETS: &[f64] = &[
        0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
    ];

    /// Requests whose chosen pod held at least one prefix block.
    pub const PREFIX_CACHE_HITS: MetricDef = counter(
        "llm_d_epp_prefix_cache_hits_total",
        "Requests routed to a pod that already held at least one of their prefix blocks.",
        &[MODEL_NAME],
    );
    /// Consecutive prefix blocks matched on the chosen pod, per request.
    pub const PREFIX_CACHE_MATCHED_BLOCKS: MetricDef = histogram(
        "llm_d_epp_prefix_cache_scorer_matched_blocks",
        "Consecutive prefix blocks (from block 0) held by the chosen pod, per scored request.",
        &[MODEL_NAME],
        MATCHED_BLOCK_BUCKETS,
    );
    /// Time from request headers+body parsed to destination chosen.
    pub const ROUTING_DECISION_DURATION: MetricDef = histogram(
        "llm_d_epp_routing_decision_duration_seconds",
        "Time the EPP spent choosing endpoints for one request (parse, tokenize, score, pick).",
        &[],
        DECISION_BUCKETS,
    );
    /// GIE: requests routed, per model and priority.
    pub const REQUEST_TOTAL: MetricDef = counter(
        "inference_objective_request_total",
        "Counter of inference objective requests broken out for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME, PRIORITY],
    );
    /// GIE: failed requests per model and error code (GIE's codes: `BadRequest`,
    /// `NotFound`, `ResourceExhausted`, `ServiceUnavailable`, `Internal`; or the model
    /// server's HTTP status when it answered with an error).
    pub const REQUEST_ERROR_TOTAL: MetricDef = counter(
        "inference_objective_request_error_total",
        "Counter of inference objective requests errors broken out for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME, ERROR_CODE],
    );
    /// GIE: request duration from first header to end of response.
    pub const REQUEST_DURATION: MetricDef = histogram(
        "inference_objective_request_duration_seconds",
        "Inference objective response latency distribution in seconds for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        REQUEST_DURATION_BUCKETS,
    );
    /// GIE: mean KV-cache utilization over the pool's ready pods.
    pub const POOL_AVG_KV_CACHE_UTILIZATION: MetricDef = gauge(
        "inference_pool_average_kv_cache_utilization",
        "The average kv cache utilization for an inference server pool.",
        &[POOL_NAME],
    );
    /// GIE: mean waiting-queue length over the pool's ready pods.
    pub const POOL_AVG_QUEUE_SIZE: MetricDef = gauge(
        "inference_pool_average_queue_size",
        "The average number of requests pending in the model server queue.",
        &[POOL_NAME],
    );
    /// GIE: ready pods in the pool.
    pub const POOL_READY_PODS: MetricDef = gauge(
        "inference_pool_ready_pods",
        "The number of ready pods in the inference server pool.",
        &[POOL_NAME],
    );
    /// GIE: mean running requests over the pool's ready pods.
    pub const POOL_AVG_RUNNING_REQUESTS: MetricDef = gauge(
        "inference_pool_average_running_requests",
        "The average number of running requests across model servers in the pool.",
        &[POOL_NAME],
    );
    /// GIE: scheduler end-to-end latency.
    pub const SCHEDULER_E2E_DURATION: MetricDef = histogram(
        "inference_extension_scheduler_e2e_duration_seconds",
        "End-to-end scheduling latency distribution in seconds.",
        &[],
        SCHEDULER_E2E_BUCKETS,
    );
    /// llm-d: P/D decisions by type (`decode-only`, `prefill-decode`), by
    /// `pd-profile-handler` (llm-d's older handler).
    pub const PD_DECISION_TOTAL: MetricDef = counter(
        "llm_d_inference_scheduler_pd_decision_total",
        "Total number of P/D disaggregation decisions made, by decision type.",
        &[MODEL_NAME, DECISION_TYPE],
    );
    /// llm-d: disaggregation decisions by type, by `disagg-profile-handler`.
    pub const DISAGG_DECISION_TOTAL: MetricDef = counter(
        "llm_d_inference_scheduler_disagg_decision_total",
        "Total number of disaggregation routing decisions made, by decision type.",
        &[MODEL_NAME, DECISION_TYPE],
    );

    /// llmd: failed scrapes of model servers' `/metrics`, by reason (`timeout`: the pod stays
    /// routable on its last load until that is stale; `connect`, `status`, `parse`: the pod is
    /// out of routing until a scrape succeeds).
    pub const METRICS_SCRAPE_FAILURES: MetricDef = counter(
        "llmd_epp_metrics_scrape_failures_total",
        "Failed scrapes of model servers' /metrics, by reason.",
        &[REASON],
    );

    /// Session tokens (`x-session-token`) the session-affinity scorer could not use, by reason
    /// (`invalid`: not base64 of a UTF-8 endpoint id; `unknown_endpoint`: names no endpoint of
    /// the pool). The request is scored as one without a session.
    pub const SESSION_TOKENS_IGNORED: MetricDef = counter(
        "llmd_epp_session_tokens_ignored_total",
        "Session tokens the session-affinity scorer ignored (scored as no session), by reason.",
        &[REASON],
    );

    /// `vllm:lora_requests_info` samples whose `max_lora` label is not a count: the pod's
    /// adapters are read without a slot count (no free slot).
    pub const LORA_INFO_MALFORMED: MetricDef = counter(
        "llmd_epp_lora_info_malformed_total",
        "LoRA info samples (vllm:lora_requests_info) scraped with a max_lora label that is not a count.",
        &[],
    );

    /// GIE's token-count buckets.
    pub const TOKEN_BUCKETS: &[f64] = &[
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
        32768.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0,
    ];
    /// GIE: prompt tokens per request, from the response's `usage`.
    pub const INPUT_TOKENS: MetricDef = histogram(
        "inference_objective_input_tokens",
        "Inference objective input token count distribution for requests in each model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        TOKEN_BUCKETS,
    );
    /// GIE: completion tokens per request, from the response's `usage`.
    pub const OUTPUT_TOKENS: MetricDef = histogram(
        "inference_objective_output_tokens",
        "Inference objective output token count distribution for requests in each model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        TOKEN_BUCKETS,
    );
    /// GIE: prompt tokens served from the engine's prefix cache, from `usage.prompt_tokens_details`.
    pub const PROMPT_CACHED_TOKENS: MetricDef = histogram(
        "inference_objective_prompt_cached_tokens",
        "Inference objective prompt cached token count distribution for requests in each model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        TOKEN_BUCKETS,
    );

    /// GIE's request-size buckets (bytes).
    pub const REQUEST_SIZE_BUCKETS: &[f64] = &[
        64.0,
        128.0,
        256.0,
        512.0,
        1024.0,
        2048.0,
        4096.0,
        8192.0,
        16384.0,
        32768.0,
        65536.0,
        131072.0,
        262144.0,
        524288.0,
        1048576.0,
        2097152.0,
        4194304.0,
        8388608.0,
        16777216.0,
        33554432.0,
        67108864.0,
        134217728.0,
        268435456.0,
        536870912.0,
        1073741824.0,
    ];
    /// GIE's response-size buckets (bytes; `32778` is GIE's own value).
    pub const RESPONSE_SIZE_BUCKETS: &[f64] = &[
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
        32778.0, 65536.0,
    ];
    /// llm-d's output-token buckets.
    pub const OUTPUT_TOKEN_BUCKETS: &[f64] = &[
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    ];
    /// GIE's normalized-time-per-output-token buckets (seconds).
    pub const NTPOT_BUCKETS: &[f64] = &[
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ];
    /// llm-d's TTFT buckets (seconds).
    pub const TTFT_BUCKETS: &[f64] = &[
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
    ];
    /// llm-d's streaming TPOT buckets (seconds).
    pub const STREAMING_TPOT_BUCKETS: &[f64] = &[
        0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5,
        0.6, 0.8, 1.0, 2.0,
    ];
    /// llm-d's streaming inter-token latency buckets (seconds).
    pub const STREAMING_ITL_BUCKETS: &[f64] = &[
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0,
    ];
    /// llm-d's request-processing buckets (seconds).
    pub const REQUEST_PROCESSING_BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0,
    ];
    /// GIE's prefix-indexer hit-ratio buckets.
    pub const HIT_RATIO_BUCKETS: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
    /// GIE's prefix-indexer hit-bytes buckets.
    pub const HIT_BYTES_BUCKETS: &[f64] = &[
        0.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
        32768.0, 65536.0,
    ];

    /// GIE: request body sizes.
    pub const REQUEST_SIZES: MetricDef = histogram(
        "inference_objective_request_sizes",
        "Inference objective requests size distribution in bytes for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        REQUEST_SIZE_BUCKETS,
    );
    /// GIE: response body sizes.
    pub const RESPONSE_SIZES: MetricDef = histogram(
        "inference_objective_response_sizes",
        "Inference objective responses size distribution in bytes for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        RESPONSE_SIZE_BUCKETS,
    );
    /// GIE: requests in flight per model.
    pub const RUNNING_REQUESTS: MetricDef = gauge(
        "inference_objective_running_requests",
        "Inference objective number of running requests in each model.",
        &[MODEL_NAME],
    );
    /// GIE: request duration / output tokens.
    pub const NTPOT: MetricDef = histogram(
        "inference_objective_normalized_time_per_output_token_seconds",
        "Inference objective latency divided by number of output tokens in seconds for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        NTPOT_BUCKETS,
    );
    /// GIE: time each plugin took.
    pub const PLUGIN_DURATION: MetricDef = histogram(
        "inference_extension_plugin_duration_seconds",
        "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
        &[EXTENSION_POINT, PLUGIN_TYPE, PLUGIN_NAME],
        SCHEDULER_E2E_BUCKETS,
    );
    /// GIE: build information (value 1).
    pub const INFO: MetricDef = gauge(
        "inference_extension_info",
        "General information of the current build of Inference Extension.",
        &[COMMIT, BUILD_REF],
    );
    /// GIE: entries of the approximate prefix index (`prefix-cache-scorer` without KV events).
    pub const PREFIX_INDEXER_SIZE: MetricDef = gauge(
        "inference_extension_prefix_indexer_size",
        "Size of the prefix indexer.",
        &[],
    );
    /// GIE: matched / total prefix length of the approximate prefix index, per routed request.
    pub const PREFIX_INDEXER_HIT_RATIO: MetricDef = histogram(
        "inference_extension_prefix_indexer_hit_ratio",
        "Ratio of prefix length matched to total prefix length in the cache lookup.",
        &[],
        HIT_RATIO_BUCKETS,
    );
    /// GIE: matched prefix length (bytes) of the approximate prefix index, per routed request.
    pub const PREFIX_INDEXER_HIT_BYTES: MetricDef = histogram(
        "inference_extension_prefix_indexer_hit_bytes",
        "Length of the prefix match in number of bytes in the cache lookup.",
        &[],
        HIT_BYTES_BUCKETS,
    );

    /// GIE ≤ v0.5 (the `InferenceModel` era; llm-d's alerting rules still query it): requests
    /// routed.
    pub const MODEL_REQUEST_TOTAL: MetricDef = counter(
        "inference_model_request_total",
        "Counter of inference model requests broken out for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
    );
    /// GIE ≤ v0.5: failed requests.
    pub const MODEL_REQUEST_ERROR_TOTAL: MetricDef = counter(
        "inference_model_request_error_total",
        "Counter of inference model requests errors broken out for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME, ERROR_CODE],
    );
    /// GIE ≤ v0.5: request duration.
    pub const MODEL_REQUEST_DURATION: MetricDef = histogram(
        "inference_model_request_duration_seconds",
        "Inference model response latency distribution in seconds for each model and target model.",
        &[MODEL_NAME, TARGET_MODEL_NAME],
        REQUEST_DURATION_BUCKETS,
    );

    /// llm-d (canonical): requests routed.
    pub const LLMD_REQUEST_TOTAL: MetricDef = counter(
        "llm_d_epp_request_total",
        "Total number of processed requests.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
    );
    /// llm-d (canonical): failed requests, by error code (as `inference_objective_request_error_total`).
    pub const LLMD_REQUEST_ERROR_TOTAL: MetricDef = counter(
        "llm_d_epp_request_error_total",
        "Total number of request errors.",
        &[
            MODEL_NAME,
            TARGET_MODEL_NAME,
            FAIRNESS_ID,
            PRIORITY,
            ERROR_CODE,
        ],
    );
    /// llm-d (canonical): request duration.
    pub const LLMD_REQUEST_DURATION: MetricDef = histogram(
        "llm_d_epp_request_duration_seconds",
        "End-to-end request latency distribution in seconds.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        REQUEST_DURATION_BUCKETS,
    );
    /// llm-d (canonical): request body sizes.
    pub const LLMD_REQUEST_SIZE: MetricDef = histogram(
        "llm_d_epp_request_size_bytes",
        "Incoming request body size distribution in bytes.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        REQUEST_SIZE_BUCKETS,
    );
    /// llm-d (canonical): response body sizes.
    pub const LLMD_RESPONSE_SIZE: MetricDef = histogram(
        "llm_d_epp_response_size_bytes",
        "Outgoing response body size distribution in bytes.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        RESPONSE_SIZE_BUCKETS,
    );
    /// llm-d (canonical): prompt tokens per request.
    pub const LLMD_INPUT_TOKENS: MetricDef = histogram(
        "llm_d_epp_request_input_tokens",
        "Input token count distribution per request.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        TOKEN_BUCKETS,
    );
    /// llm-d (canonical): completion tokens per request.
    pub const LLMD_OUTPUT_TOKENS: MetricDef = histogram(
        "llm_d_epp_request_output_tokens",
        "Output token count distribution per request.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        OUTPUT_TOKEN_BUCKETS,
    );
    /// llm-d (canonical): cached prompt tokens per request.
    pub const LLMD_CACHED_TOKENS: MetricDef = histogram(
        "llm_d_epp_request_cached_tokens",
        "Distribution of prompt tokens read from cache per request, as reported by the model server in the response.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        TOKEN_BUCKETS,
    );
    /// llm-d (canonical): requests in flight.
    pub const LLMD_REQUEST_RUNNING: MetricDef = gauge(
        "llm_d_epp_request_running",
        "Current number of active running requests.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
    );
    /// llm-d (canonical): request duration / output tokens.
    pub const LLMD_NTPOT: MetricDef = histogram(
        "llm_d_epp_request_ntpot_seconds",
        "Normalized time per output token in seconds (end-to-end latency divided by output token count).",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        NTPOT_BUCKETS,
    );
    /// llm-d (canonical): request received to first response body byte.
    pub const LLMD_TTFT: MetricDef = histogram(
        "llm_d_epp_request_ttft_seconds",
        "Time to first token in seconds, measured from request received to first response byte. For non-streaming requests, this equals total request duration.",
        &[
            MODEL_NAME,
            TARGET_MODEL_NAME,
            FAIRNESS_ID,
            PRIORITY,
            STREAMING,
        ],
        TTFT_BUCKETS,
    );
    /// llm-d (canonical): (duration − TTFT) / (output tokens − 1), streamed responses.
    pub const LLMD_STREAMING_TPOT: MetricDef = histogram(
        "llm_d_epp_request_streaming_tpot_seconds",
        "Average time per output token in seconds for streaming requests, computed as (e2e - TTFT) / (output_tokens - 1).",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        STREAMING_TPOT_BUCKETS,
    );
    /// llm-d (canonical): time between consecutive response body chunks, streamed responses.
    pub const LLMD_STREAMING_ITL: MetricDef = histogram(
        "llm_d_epp_request_streaming_itl_seconds",
        "Inter-token latency in seconds for streaming requests, measured as the time between consecutive response body chunks.",
        &[MODEL_NAME, TARGET_MODEL_NAME, FAIRNESS_ID, PRIORITY],
        STREAMING_ITL_BUCKETS,
    );
    /// llm-d (canonical): pool mean KV-cache utilization.
    pub const LLMD_AVG_KV_CACHE_UTILIZATION: MetricDef = gauge(
        "llm_d_epp_average_kv_cache_utilization",
        "The average kv cache utilization for an inference server pool.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): pool mean waiting queue.
    pub const LLMD_AVG_QUEUE_SIZE: MetricDef = gauge(
        "llm_d_epp_average_queue_size",
        "The average number of requests pending in the model server queue.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): pool mean running requests.
    pub const LLMD_AVG_RUNNING_REQUESTS: MetricDef = gauge(
        "llm_d_epp_average_running_requests",
        "The average number of running requests across model servers in the pool.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): pool standard deviation of KV-cache utilization.
    pub const LLMD_STD_DEV_KV_CACHE_UTILIZATION: MetricDef = gauge(
        "llm_d_epp_std_dev_kv_cache_utilization",
        "The standard deviation kv cache utilization for an inference server pool.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): pool standard deviation of the waiting queue.
    pub const LLMD_STD_DEV_QUEUE_SIZE: MetricDef = gauge(
        "llm_d_epp_std_dev_queue_size",
        "The standard deviation number of requests pending in the model server queue.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): pool standard deviation of running requests.
    pub const LLMD_STD_DEV_RUNNING_REQUESTS: MetricDef = gauge(
        "llm_d_epp_std_dev_running_requests",
        "The standard deviation number of running requests across model servers in the pool.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): ready endpoints of the pool.
    pub const LLMD_READY_ENDPOINTS: MetricDef = gauge(
        "llm_d_epp_ready_endpoints",
        "The number of ready endpoints in the inference server pool.",
        &[POOL_NAME],
    );
    /// llm-d (canonical): scheduler end-to-end latency.
    pub const LLMD_SCHEDULER_E2E_DURATION: MetricDef = histogram(
        "llm_d_epp_scheduler_e2e_duration_seconds",
        "End-to-end scheduling latency distribution in seconds.",
        &[],
        SCHEDULER_E2E_BUCKETS,
    );
    /// llm-d (canonical): time each plugin took.
    pub const LLMD_PLUGIN_DURATION: MetricDef = histogram(
        "llm_d_epp_plugin_duration_seconds",
        "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name.",
        &[EXTENSION_POINT, PLUGIN_TYPE, PLUGIN_NAME],
        SCHEDULER_E2E_BUCKETS,
    );
    /// llm-d (canonical): the EPP's own time on a request (receipt until the body is handled).
    pub const LLMD_REQUEST_PROCESSING_DURATION: MetricDef = histogram(
        "llm_d_epp_request_processing_duration_seconds",
        "EPP request processing latency distribution in seconds, from request receipt until the request body has been handled, including admission control.",
        &[],
        REQUEST_PROCESSING_BUCKETS,
    );
    /// llm-d (canonical): build information (value 1).
    pub const LLMD_INFO: MetricDef = gauge(
        "llm_d_epp_info",
        "General information of the current build of Inference Extension.",
        &[COMMIT, BUILD_REF],
    );
    /// llm-d (canonical): P/D decisions of `pd-profile-handler`.
    pub const LLMD_PD_DECISION_TOTAL: MetricDef = counter(
        "llm_d_epp_pd_decision_total",
        "Total number of P/D disaggregation decisions made",
        &[PLUGIN_NAME, PLUGIN_TYPE, MODEL_NAME, DECISION_TYPE],
    );
    /// llm-d (canonical): decisions of `disagg-profile-handler`.
    pub const LLMD_DISAGG_DECISION_TOTAL: MetricDef = counter(
        "llm_d_epp_disagg_decision_total",
        "Total number of disaggregation routing decisions made",
        &[PLUGIN_NAME, PLUGIN_TYPE, MODEL_NAME, DECISION_TYPE],
    );
    /// llm-d (canonical): entries of the approximate prefix index.
    pub const LLMD_PREFIX_INDEXER_SIZE: MetricDef = gauge(
        "llm_d_epp_prefix_indexer_size",
        "Size of the prefix indexer.",
        &[PLUGIN_NAME, PLUGIN_TYPE],
    );
    /// llm-d (canonical): hit ratio of the approximate prefix index.
    pub const LLMD_PREFIX_INDEXER_HIT_RATIO: MetricDef = histogram(
        "llm_d_epp_prefix_indexer_hit_ratio",
        "Ratio of prefix length matched to total prefix length in the cache lookup.",
        &[PLUGIN_NAME, PLUGIN_TYPE],
        HIT_RATIO_BUCKETS,
    );
    /// llm-d (canonical): matched bytes of the approximate prefix index.
    pub const LLMD_PREFIX_INDEXER_HIT_BYTES: MetricDef = histogram(
        "llm_d_epp_prefix_indexer_hit_bytes",
        "Length of the prefix match in number of bytes in the cache lookup.",
        &[PLUGIN_NAME, PLUGIN_TYPE],
        HIT_BYTES_BUCKETS,
    );

    /// llm-d (`inflight-load-producer`): requests this EPP routed to an endpoint and has not
    /// seen finish.
    pub const LLMD_INFLIGHT_REQUESTS: MetricDef = gauge(
        "llm_d_epp_inflight_requests",
        "Current number of in-flight requests per endpoint, as tracked by the in-flight load producer.",
        &[ENDPOINT_NAME, PRODUCER_NAME],
    );
    /// llm-d (`inflight-load-producer`): uncached prompt tokens routed to an endpoint and not
    /// yet prefilled.
    pub const LLMD_INFLIGHT_TOKENS: MetricDef = gauge(
        "llm_d_epp_inflight_tokens",
        "Current number of in-flight tokens per endpoint (uncached prompt tokens), as tracked by the in-flight load producer.",
        &[ENDPOINT_NAME, PRODUCER_NAME],
    );
    /// Ours: in-flight requests dropped from the count because their stream never ended
    /// within the request timeout.
    pub const INFLIGHT_REAPED: MetricDef = counter(
        "llmd_epp_inflight_reaped_total",
        "In-flight requests no longer counted because no end was seen within the request timeout.",
        &[],
    );

    /// Flow control's queue-wait buckets (seconds): 100 µs to 60 s (GIE's).
    pub const FLOW_CONTROL_QUEUE_BUCKETS: &[f64] = &[
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ];
    /// GIE (flow control): time from enqueue to the final outcome (`outcome`: `Dispatched`,
    /// `RejectedCapacity`, `EvictedTTL`, `EvictedNoEndpoints`, `EvictedContextCancelled`,
    /// `EvictedDisplaced`, `RejectedOther`).
    pub const FLOW_CONTROL_QUEUE_DURATION: MetricDef = histogram(
        "inference_extension_flow_control_request_queue_duration_seconds",
        "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome).",
        &[
            FAIRNESS_ID,
            PRIORITY,
            OUTCOME,
            INFERENCE_POOL,
            MODEL_NAME,
            TARGET_MODEL_NAME,
        ],
        FLOW_CONTROL_QUEUE_BUCKETS,
    );
    /// llm-d's name of [`FLOW_CONTROL_QUEUE_DURATION`].
    pub const LLMD_FLOW_CONTROL_QUEUE_DURATION: MetricDef = histogram(
        "llm_d_epp_flow_control_request_queue_duration_seconds",
        "Distribution of total time requests spend in the Flow Control layer (from enqueue to final outcome).",
        &[
            FAIRNESS_ID,
            PRIORITY,
            OUTCOME,
            INFERENCE_POOL,
            MODEL_NAME,
            TARGET_MODEL_NAME,
        ],
        FLOW_CONTROL_QUEUE_BUCKETS,
    );
    /// GIE (flow control): requests waiting in the queue now.
    pub const FLOW_CONTROL_QUEUE_SIZE: MetricDef = gauge(
        "inference_extension_flow_control_queue_size",
        "Current number of requests actively held in the Flow Control queue.",
        &[
            FAIRNESS_ID,
            PRIORITY,
            INFERENCE_POOL,
            MODEL_NAME,
            TARGET_MODEL_NAME,
        ],
    );
    /// llm-d's name of [`FLOW_CONTROL_QUEUE_SIZE`].
    pub const LLMD_FLOW_CONTROL_QUEUE_SIZE: MetricDef = gauge(
        "llm_d_epp_flow_control_queue_size",
        "Current number of requests actively held in the Flow Control queue.",
        &[
            FAIRNESS_ID,
            PRIORITY,
            INFERENCE_POOL,
            MODEL_NAME,
            TARGET_MODEL_NAME,
        ],
    );
    /// GIE (flow control): bytes of the requests waiting in the queue now.
    pub const FLOW_CONTROL_QUEUE_BYTES: MetricDef = gauge(
        "inference_extension_flow_control_queue_bytes",
        "Current total size in bytes of requests actively held in the Flow Control queue.",
        &[
            FAIRNESS_ID,
            PRIORITY,
            INFERENCE_POOL,
            MODEL_NAME,
            TARGET_MODEL_NAME,
        ],
    );
    /// llm-d's name of [`FLOW_CONTROL_QUEUE_BYTES`].
    pub const LLMD_FLOW_CONTROL_QUEUE_BYTES: MetricDef = gauge(
        "llm_d_epp_flow_control_queue_bytes",
        "Current total size in bytes of requests actively held in the Flow Control queue.",
        &[
            FAIRNESS_ID,
            PRIORITY,
            INFERENCE_POOL,
            MODEL_NAME,
            TARGET_MODEL_NAME,
        ],
    );
    /// GIE (flow control): the pool's saturation as the dispatcher last saw it.
    pub const FLOW_CONTROL_POOL_SATURATION: MetricDef = gauge(
        "inference_extension_flow_control_pool_saturation",
        "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated).",
        &[INFERENCE_POOL],
    );
    /// llm-d's name of [`FLOW_CONTROL_POOL_SATURATION`].
    pub const LLMD_FLOW_CONTROL_POOL_SATURATION: MetricDef = gauge(
        "llm_d_epp_flow_control_pool_saturation",
        "Current saturation level of the inference pool (0.0 = empty, 1.0 = fully saturated).",
        &[INFERENCE_POOL],
    );
    /// GIE (flow control): one dispatch cycle (the queue looked at, requests released).
    pub const FLOW_CONTROL_DISPATCH_CYCLE_DURATION: MetricDef = histogram(
        "inference_extension_flow_control_dispatch_cycle_duration_seconds",
        "Distribution of time taken for each internal dispatch cycle in the Flow Control layer.",
        &[],
        SCHEDULER_E2E_BUCKETS,
    );
    /// llm-d's name of [`FLOW_CONTROL_DISPATCH_CYCLE_DURATION`].
    pub const LLMD_FLOW_CONTROL_DISPATCH_CYCLE_DURATION: MetricDef = histogram(
        "llm_d_epp_flow_control_dispatch_cycle_duration_seconds",
        "Distribution of time taken for each internal dispatch cycle in the Flow Control layer.",
        &[],
        SCHEDULER_E2E_BUCKETS,
    );
    /// GIE (flow control): time to enqueue a request (`outcome`: `Enqueued`, or the rejection).
    pub const FLOW_CONTROL_ENQUEUE_DURATION: MetricDef = histogram(
        "inference_extension_flow_control_request_enqueue_duration_seconds",
        "Distribution of time taken to enqueue requests into the Flow Control layer.",
        &[FAIRNESS_ID, PRIORITY, OUTCOME],
        SCHEDULER_E2E_BUCKETS,
    );
    /// llm-d's name of [`FLOW_CONTROL_ENQUEUE_DURATION`].
    pub const LLMD_FLOW_CONTROL_ENQUEUE_DURATION: MetricDef = histogram(
        "llm_d_epp_flow_control_request_enqueue_duration_seconds",
        "Distribution of time taken to enqueue requests into the Flow Control layer.",
        &[FAIRNESS_ID, PRIORITY, OUTCOME],
        SCHEDULER_E2E_BUCKETS,
    );
    /// llm-d (flow control): requests by final outcome (as the queue-duration histogram's
    /// `outcome`).
    pub const LLMD_FLOW_CONTROL_REQUESTS: MetricDef = counter(
        "llm_d_epp_flow_control_requests_total",
        "Requests that went through the Flow Control layer, by final outcome.",
        &[FAIRNESS_ID, PRIORITY, OUTCOME, INFERENCE_POOL],
    );

    /// Every EPP metric except the KV-index ones (see [`super::kv_cache`]).
    pub const ALL: &[&MetricDef] = &[
        &PREFIX_CACHE_HITS,
        &PREFIX_CACHE_MATCHED_BLOCKS,
        &ROUTING_DECISION_DURATION,
        &REQUEST_TOTAL,
        &REQUEST_ERROR_TOTAL,
        &REQUEST_DURATION,
        &POOL_AVG_KV_CACHE_UTILIZATION,
        &POOL_AVG_QUEUE_SIZE,
        &POOL_READY_PODS,
        &SCHEDULER_E2E_DURATION,
        &PD_DECISION_TOTAL,
        &INPUT_TOKENS,
        &OUTPUT_TOKENS,
        &PROMPT_CACHED_TOKENS,
        &POOL_AVG_RUNNING_REQUESTS,
        &DISAGG_DECISION_TOTAL,
        &METRICS_SCRAPE_FAILURES,
        &SESSION_TOKENS_IGNORED,
        &LORA_INFO_MALFORMED,
        &REQUEST_SIZES,
        &RESPONSE_SIZES,
        &RUNNING_REQUESTS,
        &NTPOT,
        &PLUGIN_DURATION,
        &INFO,
        &PREFIX_INDEXER_SIZE,
        &PREFIX_INDEXER_HIT_RATIO,
        &PREFIX_INDEXER_HIT_BYTES,
        &MODEL_REQUEST_TOTAL,
        &MODEL_REQUEST_ERROR_TOTAL,
        &MODEL_REQUEST_DURATION,
        &LLMD_REQUEST_TOTAL,
        &LLMD_REQUEST_ERROR_TOTAL,
        &LLMD_REQUEST_DURATION,
        &LLMD_REQUEST_SIZE,
        &LLMD_RESPONSE_SIZE,
        &LLMD_INPUT_TOKENS,
        &LLMD_OUTPUT_TOKENS,
        &LLMD_CACHED_TOKENS,
        &LLMD_REQUEST_RUNNING,
        &LLMD_NTPOT,
        &LLMD_TTFT,
        &LLMD_STREAMING_TPOT,
        &LLMD_STREAMING_ITL,
        &LLMD_AVG_KV_CACHE_UTILIZATION,
        &LLMD_AVG_QUEUE_SIZE,
        &LLMD_AVG_RUNNING_REQUESTS,
        &LLMD_STD_DEV_KV_CACHE_UTILIZATION,
        &LLMD_STD_DEV_QUEUE_SIZE,
        &LLMD_STD_DEV_RUNNING_REQUESTS,
        &LLMD_READY_ENDPOINTS,
        &LLMD_SCHEDULER_E2E_DURATION,
        &LLMD_PLUGIN_DURATION,
        &LLMD_REQUEST_PROCESSING_DURATION,
        &LLMD_INFO,
        &LLMD_PD_DECISION_TOTAL,
        &LLMD_DISAGG_DECISION_TOTAL,
        &LLMD_PREFIX_INDEXER_SIZE,
        &LLMD_PREFIX_INDEXER_HIT_RATIO,
        &LLMD_PREFIX_INDEXER_HIT_BYTES,
        &LLMD_INFLIGHT_REQUESTS,
        &LLMD_INFLIGHT_TOKENS,
        &INFLIGHT_REAPED,
        &FLOW_CONTROL_QUEUE_DURATION,
        &LLMD_FLOW_CONTROL_QUEUE_DURATION,
        &FLOW_CONTROL_QUEUE_SIZE,
        &LLMD_FLOW_CONTROL_QUEUE_SIZE,
        &FLOW_CONTROL_QUEUE_BYTES,
        &LLMD_FLOW_CONTROL_QUEUE_BYTES,
        &FLOW_CONTROL_POOL_SATURATION,
        &LLMD_FLOW_CONTROL_POOL_SATURATION,
        &FLOW_CONTROL_DISPATCH_CYCLE_DURATION,
        &LLMD_FLOW_CONTROL_DISPATCH_CYCLE_DURATION,
        &FLOW_CONTROL_ENQUEUE_DURATION,
        &LLMD_FLOW_CONTROL_ENQUEUE_DURATION,
        &LLMD_FLOW_CONTROL_REQUESTS,
    ];
}

/// Metrics of the precise prefix-cache index and its KV-event stream (`llmd-kv-index`, exposed
/// by the EPP), under llm-d's `llm_d_epp_kv_cache_` prefix.
pub mod kv_cache {
    use super::*;

    /// Lookup latency buckets (seconds): 1 µs to 10 ms.
    pub const LOOKUP_BUCKETS: &[f64] = &[
        0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
        0.0025, 0.005, 0.01,
    ];

    /// (block, pod) entries added to the index.
    pub const INDEX_ADMISSIONS: MetricDef = counter(
        "llm_d_epp_kv_cache_index_admissions_total",
        "Block-to-pod entries added to the prefix index.",
        &[],
    );
    /// (block, pod) entries evicted to stay within the byte budget.
    pub const INDEX_EVICTIONS: MetricDef = counter(
        "llm_d_epp_kv_cache_index_evictions_total",
        "Block-to-pod entries evicted from the prefix index to stay within its memory budget.",
        &[],
    );
    /// Index lookups.
    pub const INDEX_LOOKUP_REQUESTS: MetricDef = counter(
        "llm_d_epp_kv_cache_index_lookup_requests_total",
        "Prefix index lookups.",
        &[],
    );
    /// Blocks matched per lookup by the best candidate, summed (llm-d's meaning: divided by
    /// the lookups, the mean prefix hit in blocks).
    pub const INDEX_LOOKUP_HITS: MetricDef = counter(
        "llm_d_epp_kv_cache_index_lookup_hits_total",
        "Consecutive prefix blocks (from block 0) held by the best candidate pod, summed over prefix index lookups.",
        &[],
    );
    /// llm-d's twin of the above (the longest per-pod chain per lookup; the same sum).
    pub const INDEX_MAX_POD_HIT_COUNT: MetricDef = counter(
        "llm_d_epp_kv_cache_index_max_pod_hit_count_total",
        "Longest contiguous per-pod prefix chain (blocks) observed per lookup, summed over prefix index lookups.",
        &[],
    );
    /// Lookup latency.
    pub const INDEX_LOOKUP_LATENCY: MetricDef = histogram(
        "llm_d_epp_kv_cache_index_lookup_latency_seconds",
        "Latency of one prefix index lookup.",
        &[],
        LOOKUP_BUCKETS,
    );
    /// Current (block, pod) entries.
    pub const INDEX_ENTRIES: MetricDef = gauge(
        "llm_d_epp_kv_cache_index_entries",
        "Block-to-pod entries currently held by the prefix index.",
        &[],
    );
    /// Current index memory, as accounted against the budget.
    pub const INDEX_BYTES: MetricDef = gauge(
        "llm_d_epp_kv_cache_index_bytes",
        "Bytes of memory the prefix index accounts for its entries.",
        &[],
    );
    /// llm-d's deprecated `kvcache_index_*` twins (still emitted by llm-d; its kv-cache
    /// dashboard and alert rules query them).
    pub const LEGACY_INDEX_ADMISSIONS: MetricDef = counter(
        "kvcache_index_admissions_total",
        "Deprecated: use llm_d_epp_kv_cache_index_admissions_total. Block-to-pod entries added to the prefix index.",
        &[],
    );
    /// Deprecated twin of [`INDEX_EVICTIONS`].
    pub const LEGACY_INDEX_EVICTIONS: MetricDef = counter(
        "kvcache_index_evictions_total",
        "Deprecated: use llm_d_epp_kv_cache_index_evictions_total. Block-to-pod entries evicted from the prefix index.",
        &[],
    );
    /// Deprecated twin of [`INDEX_LOOKUP_REQUESTS`].
    pub const LEGACY_INDEX_LOOKUP_REQUESTS: MetricDef = counter(
        "kvcache_index_lookup_requests_total",
        "Deprecated: use llm_d_epp_kv_cache_index_lookup_requests_total. Prefix index lookups.",
        &[],
    );
    /// Deprecated twin of [`INDEX_LOOKUP_HITS`].
    pub const LEGACY_INDEX_LOOKUP_HITS: MetricDef = counter(
        "kvcache_index_lookup_hits_total",
        "Deprecated: use llm_d_epp_kv_cache_index_lookup_hits_total. Consecutive prefix blocks held by the best candidate pod, summed over lookups.",
        &[],
    );
    /// Deprecated twin of [`INDEX_MAX_POD_HIT_COUNT`].
    pub const LEGACY_INDEX_MAX_POD_HIT_COUNT: MetricDef = counter(
        "kvcache_index_max_pod_hit_count_total",
        "Deprecated: use llm_d_epp_kv_cache_index_max_pod_hit_count_total. Longest contiguous per-pod prefix chain per lookup, summed.",
        &[],
    );
    /// Deprecated twin of [`INDEX_LOOKUP_LATENCY`].
    pub const LEGACY_INDEX_LOOKUP_LATENCY: MetricDef = histogram(
        "kvcache_index_lookup_latency_seconds",
        "Deprecated: use llm_d_epp_kv_cache_index_lookup_latency_seconds. Latency of one prefix index lookup.",
        &[],
        LOOKUP_BUCKETS,
    );
    /// ZMQ messages received from engines.
    pub const EVENTS_MESSAGES_RECEIVED: MetricDef = counter(
        "llm_d_epp_kv_cache_events_messages_received_total",
        "KV-event messages received from model servers.",
        &[POD, POD_IDENTIFIER],
    );
    /// Messages or events that could not be decoded.
    pub const EVENTS_DECODE_ERRORS: MetricDef = counter(
        "llm_d_epp_kv_cache_events_decode_errors_total",
        "KV-event messages or events that could not be decoded and were skipped.",
        &[REASON],
    );
    /// Unknown event types or fields that were skipped.
    pub const EVENTS_SKIPPED: MetricDef = counter(
        "llm_d_epp_kv_cache_events_skipped_total",
        "KV events or fields of unknown kind that were skipped.",
        &[REASON],
    );
    /// Gaps in a publisher's sequence numbers.
    pub const EVENTS_SEQUENCE_GAPS: MetricDef = counter(
        "llm_d_epp_kv_cache_events_sequence_gaps_total",
        "Gaps detected in a model server's KV-event sequence numbers.",
        &[POD, POD_IDENTIFIER],
    );
    /// Publisher restarts; each clears the pod's entries.
    pub const EVENTS_PUBLISHER_RESTARTS: MetricDef = counter(
        "llm_d_epp_kv_cache_events_publisher_restarts_total",
        "Model-server KV-event publisher restarts detected (sequence or timestamps going back, or the replay socket's answer after a gap or reconnection); each clears the pod's index entries.",
        &[POD, POD_IDENTIFIER],
    );
    /// Subscriber reconnections.
    pub const EVENTS_SUBSCRIBER_RECONNECTIONS: MetricDef = counter(
        "llm_d_epp_kv_cache_events_subscriber_reconnections_total",
        "Reconnections of KV-event subscriber sockets.",
        &[POD, POD_IDENTIFIER],
    );
    /// Messages on the bound socket that were not applied because of their topic or sender.
    pub const EVENTS_REJECTED: MetricDef = counter(
        "llm_d_epp_kv_cache_events_rejected_messages_total",
        "KV-event messages on the bound socket that were not applied: the topic names no known pod (unknown_pod), several (ambiguous_pod), a pod whose events are dialled (dialled_pod), or the sender's address is not the pod's (peer_address).",
        &[REASON],
    );
    /// Replay requests to a pod's replay (ROUTER) socket.
    pub const EVENTS_REPLAY_REQUESTS: MetricDef = counter(
        "llm_d_epp_kv_cache_events_replay_requests_total",
        "Requests to a model server's KV-event replay socket, by why they were made (start, gap, reconnect, restart).",
        &[POD, POD_IDENTIFIER, REASON],
    );
    /// Batches recovered through replay.
    pub const EVENTS_REPLAYED_BATCHES: MetricDef = counter(
        "llm_d_epp_kv_cache_events_replayed_batches_total",
        "KV-event batches recovered from a model server's replay socket and applied.",
        &[POD, POD_IDENTIFIER],
    );
    /// Replay latency buckets (seconds): 1 ms to 10 s.
    pub const REPLAY_BUCKETS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    /// Duration of one replay request.
    pub const EVENTS_REPLAY_DURATION: MetricDef = histogram(
        "llm_d_epp_kv_cache_events_replay_duration_seconds",
        "Time from sending a replay request to its end marker (or failure).",
        &[],
        REPLAY_BUCKETS,
    );
    /// Active subscriber sockets.
    pub const EVENTS_ACTIVE_SUBSCRIBERS: MetricDef = gauge(
        "llm_d_epp_kv_cache_events_active_subscribers",
        "KV-event subscriber sockets currently open.",
        &[],
    );
    /// ZMQ socket errors by operation.
    pub const EVENTS_ZMQ_ERRORS: MetricDef = counter(
        "llm_d_epp_kv_cache_events_zmq_errors_total",
        "ZMQ socket errors of the KV-event stream (connect retries, failed handshakes, receive and replay failures).",
        &[OPERATION],
    );

    /// Every KV-index metric.
    pub const ALL: &[&MetricDef] = &[
        &INDEX_ADMISSIONS,
        &INDEX_EVICTIONS,
        &INDEX_LOOKUP_REQUESTS,
        &INDEX_LOOKUP_HITS,
        &INDEX_MAX_POD_HIT_COUNT,
        &INDEX_LOOKUP_LATENCY,
        &INDEX_ENTRIES,
        &INDEX_BYTES,
        &LEGACY_INDEX_ADMISSIONS,
        &LEGACY_INDEX_EVICTIONS,
        &LEGACY_INDEX_LOOKUP_REQUESTS,
        &LEGACY_INDEX_LOOKUP_HITS,
        &LEGACY_INDEX_MAX_POD_HIT_COUNT,
        &LEGACY_INDEX_LOOKUP_LATENCY,
        &EVENTS_MESSAGES_RECEIVED,
        &EVENTS_DECODE_ERRORS,
        &EVENTS_SKIPPED,
        &EVENTS_SEQUENCE_GAPS,
        &EVENTS_PUBLISHER_RESTARTS,
        &EVENTS_SUBSCRIBER_RECONNECTIONS,
        &EVENTS_ACTIVE_SUBSCRIBERS,
        &EVENTS_ZMQ_ERRORS,
        &EVENTS_REJECTED,
        &EVENTS_REPLAY_REQUESTS,
        &EVENTS_REPLAYED_BATCHES,
        &EVENTS_REPLAY_DURATION,
    ];
}

/// Metrics of the P/D routing sidecar (`llmd-pd-proxy`). Buckets are those of llm-d PR #567
/// (`reference/pd-proxy-vllm-sim-loadgen.md` §1.13), extended downward to 0.01 ms so
/// sub-millisecond coordinator overhead is visible, and upward where long prompts outgrow them.
pub mod pd_proxy {
    use super::*;

    /// True TTFT buckets (ms).
    pub const TRUE_TTFT_BUCKETS: &[f64] = &[
        0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
        5000.0, 10000.0, 20000.0,
    ];
    /// Coordinator overhead buckets (ms).
    pub const COORDINATOR_OVERHEAD_BUCKETS: &[f64] = &[
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
    ];
    /// Prefill leg buckets (ms).
    pub const PREFILL_DURATION_BUCKETS: &[f64] = &[
        0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
        10000.0, 30000.0,
    ];
    /// Decode leg buckets (ms).
    pub const DECODE_DURATION_BUCKETS: &[f64] = &[
        0.01, 0.1, 1.0, 5.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
        20000.0, 60000.0,
    ];
    /// Whole-request buckets (ms).
    pub const TOTAL_DURATION_BUCKETS: &[f64] = &[
        0.01, 0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
        10000.0, 20000.0, 60000.0,
    ];

    /// Client-visible time to first token.
    pub const TRUE_TTFT: MetricDef = histogram(
        "llm_d_inference_scheduler_pd_proxy_true_ttft_milliseconds",
        "[ALPHA] Time from the proxy receiving a request to the first token of the decode stream (prefill + coordinator overhead + decode TTFT).",
        &[CONNECTOR],
        TRUE_TTFT_BUCKETS,
    );
    /// The proxy's own time: total minus time waiting on the two upstream legs.
    pub const COORDINATOR_OVERHEAD: MetricDef = histogram(
        "llm_d_inference_scheduler_pd_proxy_coordinator_overhead_milliseconds",
        "[ALPHA] Time the proxy itself spent on a P/D request (total minus time waiting on prefill and decode).",
        &[CONNECTOR],
        COORDINATOR_OVERHEAD_BUCKETS,
    );
    /// Whole prefill leg, retries included.
    pub const PREFILL_DURATION: MetricDef = histogram(
        "llm_d_inference_scheduler_pd_proxy_prefill_duration_milliseconds",
        "[ALPHA] Duration of the prefill leg, retries and backoff included.",
        &[CONNECTOR],
        PREFILL_DURATION_BUCKETS,
    );
    /// Decode leg until its stream ends.
    pub const DECODE_DURATION: MetricDef = histogram(
        "llm_d_inference_scheduler_pd_proxy_decode_duration_milliseconds",
        "[ALPHA] Duration of the decode leg until the end of its response stream.",
        &[CONNECTOR],
        DECODE_DURATION_BUCKETS,
    );
    /// Whole request as the proxy saw it.
    pub const TOTAL_DURATION: MetricDef = histogram(
        "llm_d_inference_scheduler_pd_proxy_total_duration_milliseconds",
        "[ALPHA] Duration of a P/D request from arrival at the proxy to the end of the response.",
        &[CONNECTOR],
        TOTAL_DURATION_BUCKETS,
    );
    /// Requests by connector and outcome.
    pub const REQUESTS_TOTAL: MetricDef = counter(
        "llm_d_inference_scheduler_pd_proxy_requests_total",
        "Requests handled by the P/D proxy, by connector and outcome.",
        &[CONNECTOR, OUTCOME],
    );
    /// Errors by the stage they came from.
    pub const ERRORS_TOTAL: MetricDef = counter(
        "llm_d_inference_scheduler_pd_proxy_errors_total",
        "Errors of the P/D proxy by the stage they came from (client, prefill, decode, proxy).",
        &[STAGE],
    );

    /// Requests the proxy passes through to the decode engine (no prefill header, other
    /// paths), by outcome.
    pub const PASSTHROUGH_REQUESTS_TOTAL: MetricDef = counter(
        "llm_d_inference_scheduler_pd_proxy_passthrough_requests_total",
        "Requests passed through to the decode engine unchanged, by outcome (ok, engine_error, stream_error, cancelled, or the proxy's own refusal).",
        &[OUTCOME],
    );

    /// Every P/D proxy metric.
    pub const ALL: &[&MetricDef] = &[
        &TRUE_TTFT,
        &COORDINATOR_OVERHEAD,
        &PREFILL_DURATION,
        &DECODE_DURATION,
        &TOTAL_DURATION,
        &REQUESTS_TOTAL,
        &ERRORS_TOTAL,
        &PASSTHROUGH_REQUESTS_TOTAL,
    ];
}

/// Metrics of the Kubernetes discovery (`llmd-k8s`), exposed by every process that follows an
/// InferencePool (the EPP, the P/D proxy with `--inference-pool`).
pub mod kubernetes {
    use super::*;

    /// Failed watches and unusable objects.
    pub const WATCH_ERRORS: MetricDef = counter(
        "llmd_kubernetes_watch_errors_total",
        "Failures following an InferencePool and its pods, by resource and reason: api (a LIST or WATCH failed or was refused; retried with backoff, the last known state kept), invalid_spec (the InferencePool's spec is unusable; the last usable one kept).",
        &[RESOURCE, REASON],
    );

    /// Every Kubernetes discovery metric.
    pub const ALL: &[&MetricDef] = &[&WATCH_ERRORS];
}

/// Metrics of the development gateway (`llmd-gateway`, llmd-rs's own names; Envoy keeps its own
/// stats). Exposed on its `--metrics-port`.
pub mod gateway {
    use super::*;

    /// Requests by the status sent and how the response really ended.
    pub const REQUESTS_TOTAL: MetricDef = counter(
        "llmd_gateway_requests_total",
        "Requests answered by the gateway, counted when the response ends, by status code and outcome (ok: the whole response was sent; cut: the upstream or the EPP failed mid-response and the client was sent an error; client_gone: the client left first).",
        &[CODE, OUTCOME],
    );
    /// Failures by reason.
    pub const ERRORS_TOTAL: MetricDef = counter(
        "llmd_gateway_errors_total",
        "Failures seen by the gateway, by reason: body_too_large, body_unreadable, epp_unavailable, epp_response_phase (the EPP failed while a response was relayed: passed through), epp_cut (the EPP ended a response it had started), no_destination, upstream_unreachable, upstream_timeout, upstream_error, upstream_cut (the upstream failed mid-response).",
        &[REASON],
    );
    /// Client connections closed by the gateway, by reason.
    pub const CONNECTIONS_CLOSED_TOTAL: MetricDef = counter(
        "llmd_gateway_connections_closed_total",
        "Client connections the gateway closed on its own, by reason: header_read_timeout (no complete request headers in time), idle_timeout (no request in flight for the idle timeout).",
        &[REASON],
    );
    /// Client connections open now.
    pub const OPEN_CONNECTIONS: MetricDef = gauge(
        "llmd_gateway_open_connections",
        "Client connections open at the gateway.",
        &[],
    );
    /// Requests in flight now (until their response ends).
    pub const IN_FLIGHT_REQUESTS: MetricDef = gauge(
        "llmd_gateway_in_flight_requests",
        "Requests in flight at the gateway, from their headers to the end of their response.",
        &[],
    );

    /// Every gateway metric.
    pub const ALL: &[&MetricDef] = &[
        &REQUESTS_TOTAL,
        &ERRORS_TOTAL,
        &CONNECTIONS_CLOSED_TOTAL,
        &OPEN_CONNECTIONS,
        &IN_FLIGHT_REQUESTS,
    ];
}

/// vLLM's own metric names, labels and buckets (`vllm/v1/metrics/loggers.py` and the NIXL
/// connector's stats), as the simulator must expose them. Labels: `model_name`, `engine`.
pub mod vllm {
    use super::*;

    const ME: &[&str] = &[MODEL_NAME, ENGINE];

    /// `vllm:time_to_first_token_seconds` buckets.
    pub const TTFT_BUCKETS: &[f64] = &[
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
    ];
    /// `vllm:inter_token_latency_seconds` buckets.
    pub const ITL_BUCKETS: &[f64] = &[
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0,
    ];
    /// Request-level latency buckets (e2e, queue, prefill, decode, inference).
    pub const REQUEST_LATENCY_BUCKETS: &[f64] = &[
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
        240.0, 480.0, 960.0, 1920.0, 7680.0,
    ];
    /// `vllm:nixl_xfer_time_seconds` buckets.
    pub const NIXL_XFER_TIME_BUCKETS: &[f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
    ];
    /// `vllm:nixl_post_time_seconds` buckets.
    pub const NIXL_POST_TIME_BUCKETS: &[f64] = &[
        0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
    ];
    /// `vllm:nixl_bytes_transferred` buckets: 2^11, 2^13, ..., 2^33.
    pub const NIXL_BYTES_BUCKETS: &[f64] = &[
        2048.0,
        8192.0,
        32768.0,
        131072.0,
        524288.0,
        2097152.0,
        8388608.0,
        33554432.0,
        134217728.0,
        536870912.0,
        2147483648.0,
        8589934592.0,
    ];
    /// `vllm:nixl_num_descriptors` buckets.
    pub const NIXL_DESCRIPTOR_BUCKETS: &[f64] = &[
        10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 400.0, 1000.0, 2000.0, 4000.0, 10000.0,
        20000.0, 50000.0,
    ];

    /// vLLM's `build_1_2_5_buckets(max_value)`: 1, 2, 5, 10, 20, 50, ... up to `max_value`.
    /// Used for the per-request token-count histograms, whose top depends on `--max-model-len`.
    pub fn buckets_1_2_5(max_value: u64) -> Vec<f64> {
        let mut out = Vec::new();
        let mut exponent: u32 = 0;
        'outer: loop {
            for m in [1u64, 2, 5] {
                let Some(value) = 10u64.checked_pow(exponent).and_then(|p| p.checked_mul(m)) else {
                    break 'outer;
                };
                if value > max_value {
                    break 'outer;
                }
                out.push(value as f64);
            }
            exponent += 1;
        }
        out
    }

    /// Requests in execution batches.
    pub const NUM_REQUESTS_RUNNING: MetricDef = gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        ME,
    );
    /// Requests waiting to be scheduled.
    pub const NUM_REQUESTS_WAITING: MetricDef = gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        ME,
    );
    /// KV-cache usage, 0..1.
    pub const KV_CACHE_USAGE_PERC: MetricDef = gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        ME,
    );
    /// TTFT histogram.
    pub const TIME_TO_FIRST_TOKEN: MetricDef = histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        ME,
        TTFT_BUCKETS,
    );
    /// Inter-token latency histogram.
    pub const INTER_TOKEN_LATENCY: MetricDef = histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        ME,
        ITL_BUCKETS,
    );
    /// End-to-end request latency.
    pub const E2E_REQUEST_LATENCY: MetricDef = histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        ME,
        REQUEST_LATENCY_BUCKETS,
    );
    /// Time spent waiting before being scheduled.
    pub const REQUEST_QUEUE_TIME: MetricDef = histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        ME,
        REQUEST_LATENCY_BUCKETS,
    );
    /// Prefill phase time.
    pub const REQUEST_PREFILL_TIME: MetricDef = histogram(
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        ME,
        REQUEST_LATENCY_BUCKETS,
    );
    /// Decode phase time.
    pub const REQUEST_DECODE_TIME: MetricDef = histogram(
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        ME,
        REQUEST_LATENCY_BUCKETS,
    );
    /// Prefilled tokens.
    pub const PROMPT_TOKENS: MetricDef = counter(
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        ME,
    );
    /// Generated tokens.
    pub const GENERATION_TOKENS: MetricDef = counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        ME,
    );
    /// Prefix-cache queries, in tokens.
    pub const PREFIX_CACHE_QUERIES: MetricDef = counter(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        ME,
    );
    /// Prefix-cache hits, in tokens.
    pub const PREFIX_CACHE_HITS: MetricDef = counter(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        ME,
    );
    /// Finished requests by finish reason.
    pub const REQUEST_SUCCESS: MetricDef = counter(
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        &[MODEL_NAME, ENGINE, FINISHED_REASON],
    );
    /// Preemptions.
    pub const NUM_PREEMPTIONS: MetricDef = counter(
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        ME,
    );
    /// NIXL transfer time (decode side).
    pub const NIXL_XFER_TIME: MetricDef = histogram(
        "vllm:nixl_xfer_time_seconds",
        "Histogram of transfer duration for NIXL KV Cache transfers.",
        ME,
        NIXL_XFER_TIME_BUCKETS,
    );
    /// NIXL post time (decode side).
    pub const NIXL_POST_TIME: MetricDef = histogram(
        "vllm:nixl_post_time_seconds",
        "Histogram of transfer post time for NIXL KV Cache transfers.",
        ME,
        NIXL_POST_TIME_BUCKETS,
    );
    /// NIXL bytes per transfer (decode side).
    pub const NIXL_BYTES_TRANSFERRED: MetricDef = histogram(
        "vllm:nixl_bytes_transferred",
        "Histogram of bytes transferred per NIXL KV Cache transfers.",
        ME,
        NIXL_BYTES_BUCKETS,
    );
    /// NIXL descriptors per transfer (decode side).
    pub const NIXL_NUM_DESCRIPTORS: MetricDef = histogram(
        "vllm:nixl_num_descriptors",
        "Histogram of number of descriptors in NIXL KV Cache transfers.",
        ME,
        NIXL_DESCRIPTOR_BUCKETS,
    );
    /// Failed NIXL transfers (decode side).
    pub const NIXL_NUM_FAILED_TRANSFERS: MetricDef = counter(
        "vllm:nixl_num_failed_transfers_total",
        "Number of failed NIXL KV Cache transfers.",
        ME,
    );
    /// Requests whose leased KV blocks expired before decode fetched them (prefill side).
    pub const NIXL_NUM_KV_EXPIRED_REQS: MetricDef = counter(
        "vllm:nixl_num_kv_expired_reqs_total",
        "Number of requests that had their KV expire.",
        ME,
    );

    /// `build_1_2_5_buckets(131072)`: the per-request token-count buckets at the default
    /// `--max-model-len`; a simulator with another context length overrides them with
    /// [`buckets_1_2_5`].
    pub const TOKENS_1_2_5_BUCKETS: &[f64] = &[
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
        20000.0, 50000.0, 100000.0,
    ];
    /// `vllm:iteration_tokens_total` buckets.
    pub const ITERATION_TOKENS_BUCKETS: &[f64] = &[
        1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    ];
    /// `vllm:request_params_n` buckets.
    pub const PARAMS_N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
    /// Labels of `vllm:cache_config_info`: the `CacheConfig` fields the simulator reports
    /// (vLLM reports every field, as text) and `engine`; no `model_name`.
    pub const CACHE_CONFIG_LABELS: &[&str] = &[
        "block_size",
        "cache_dtype",
        "enable_prefix_caching",
        "gpu_memory_utilization",
        "num_cpu_blocks",
        "num_gpu_blocks",
        "prefix_caching_hash_algo",
        ENGINE,
    ];
    /// Labels of `vllm:lora_requests_info` (no `model_name` or `engine`, as in vLLM).
    pub const LORA_INFO_LABELS: &[&str] =
        &["max_lora", "waiting_lora_adapters", "running_lora_adapters"];

    /// Prompt tokens per finished request.
    pub const REQUEST_PROMPT_TOKENS: MetricDef = histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        ME,
        TOKENS_1_2_5_BUCKETS,
    );
    /// Generated tokens per finished request.
    pub const REQUEST_GENERATION_TOKENS: MetricDef = histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        ME,
        TOKENS_1_2_5_BUCKETS,
    );
    /// Most generated tokens among a request's sequences (its generated tokens when `n` = 1).
    pub const REQUEST_MAX_NUM_GENERATION_TOKENS: MetricDef = histogram(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        ME,
        TOKENS_1_2_5_BUCKETS,
    );
    /// The `max_tokens` request parameter (when the request set it).
    pub const REQUEST_PARAMS_MAX_TOKENS: MetricDef = histogram(
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        ME,
        TOKENS_1_2_5_BUCKETS,
    );
    /// The `n` request parameter.
    pub const REQUEST_PARAMS_N: MetricDef = histogram(
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        ME,
        PARAMS_N_BUCKETS,
    );
    /// Tokens per engine step (prompt tokens of requests whose prefill finished, plus generated
    /// tokens).
    pub const ITERATION_TOKENS: MetricDef = histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        ME,
        ITERATION_TOKENS_BUCKETS,
    );
    /// Time from scheduled to last token.
    pub const REQUEST_INFERENCE_TIME: MetricDef = histogram(
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        ME,
        REQUEST_LATENCY_BUCKETS,
    );
    /// Mean time per output token of a request (decode time / (generated - 1)).
    pub const REQUEST_TIME_PER_OUTPUT_TOKEN: MetricDef = histogram(
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        ME,
        ITL_BUCKETS,
    );
    /// The KV-cache configuration as labels, value 1 (GIE and llm-d EPPs read `block_size`
    /// and `num_gpu_blocks` from it).
    pub const CACHE_CONFIG_INFO: MetricDef = gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        CACHE_CONFIG_LABELS,
    );
    /// Running and waiting LoRA adapters (comma-separated names) and `--max-loras`, as labels;
    /// the value is the Unix time of the update (only with `--enable-lora`).
    pub const LORA_REQUESTS_INFO: MetricDef = gauge(
        "vllm:lora_requests_info",
        "Running stats on lora requests.",
        LORA_INFO_LABELS,
    );
    /// KV-connector prefix-cache queries, in tokens (the tokens not found locally).
    pub const EXTERNAL_PREFIX_CACHE_QUERIES: MetricDef = counter(
        "vllm:external_prefix_cache_queries_total",
        "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
        ME,
    );
    /// KV-connector prefix-cache hits, in tokens (tokens received over the connector).
    pub const EXTERNAL_PREFIX_CACHE_HITS: MetricDef = counter(
        "vllm:external_prefix_cache_hits_total",
        "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
        ME,
    );
    /// Failed NIXL notifications (decode side: the notification of a full local prefix hit).
    pub const NIXL_NUM_FAILED_NOTIFICATIONS: MetricDef = counter(
        "vllm:nixl_num_failed_notifications_total",
        "Number of failed NIXL KV Cache notifications.",
        ME,
    );

    /// Every vLLM metric the simulator exposes.
    pub const ALL: &[&MetricDef] = &[
        &NUM_REQUESTS_RUNNING,
        &NUM_REQUESTS_WAITING,
        &KV_CACHE_USAGE_PERC,
        &TIME_TO_FIRST_TOKEN,
        &INTER_TOKEN_LATENCY,
        &E2E_REQUEST_LATENCY,
        &REQUEST_QUEUE_TIME,
        &REQUEST_PREFILL_TIME,
        &REQUEST_DECODE_TIME,
        &PROMPT_TOKENS,
        &GENERATION_TOKENS,
        &PREFIX_CACHE_QUERIES,
        &PREFIX_CACHE_HITS,
        &REQUEST_SUCCESS,
        &NUM_PREEMPTIONS,
        &NIXL_XFER_TIME,
        &NIXL_POST_TIME,
        &NIXL_BYTES_TRANSFERRED,
        &NIXL_NUM_DESCRIPTORS,
        &NIXL_NUM_FAILED_TRANSFERS,
        &NIXL_NUM_KV_EXPIRED_REQS,
        &REQUEST_PROMPT_TOKENS,
        &REQUEST_GENERATION_TOKENS,
        &REQUEST_MAX_NUM_GENERATION_TOKENS,
        &REQUEST_PARAMS_MAX_TOKENS,
        &REQUEST_PARAMS_N,
        &ITERATION_TOKENS,
        &REQUEST_INFERENCE_TIME,
        &REQUEST_TIME_PER_OUTPUT_TOKEN,
        &CACHE_CONFIG_INFO,
        &LORA_REQUESTS_INFO,
        &EXTERNAL_PREFIX_CACHE_QUERIES,
        &EXTERNAL_PREFIX_CACHE_HITS,
        &NIXL_NUM_FAILED_NOTIFICATIONS,
    ];

    /// Histograms whose buckets follow `--max-model-len` (vLLM's `build_1_2_5_buckets`).
    pub const MAX_MODEL_LEN_BUCKETED: &[&MetricDef] = &[
        &REQUEST_PROMPT_TOKENS,
        &REQUEST_GENERATION_TOKENS,
        &REQUEST_MAX_NUM_GENERATION_TOKENS,
        &REQUEST_PARAMS_MAX_TOKENS,
    ];
}

/// OpenTelemetry `service.name` of each component : the names the llm-d
/// P/D demo's trace console lists. A component running alone exports under its process's
/// service name (`OTEL_SERVICE_NAME`, or these defaults); components sharing a process (the
/// demo, in-process test stacks) put their own name on their spans in [`services::SPAN_ATTR`],
/// and the exporter moves it into the resource.
pub mod services {
    /// The EPP (endpoint picker, scheduler).
    pub const SCHEDULER: &str = "llm-d-inference-scheduler";
    /// The P/D routing sidecar.
    pub const PD_PROXY: &str = "llm-d-pd-proxy";
    /// The gateway (llmd-gateway, the local stand-in for Envoy).
    pub const GATEWAY: &str = "gateway-api-inference-extension";
    /// An engine serving the prefill role.
    pub const VLLM_PREFILL: &str = "vllm-prefill";
    /// An engine serving the decode role.
    pub const VLLM_DECODE: &str = "vllm-decode";
    /// An engine serving both roles (decode-only pools).
    pub const VLLM: &str = "vllm";
    /// The load generator (the client).
    pub const LOADGEN: &str = "llmd-loadgen";
    /// The span attribute a component names itself in when it shares a process with others.
    pub const SPAN_ATTR: &str = "service.name";
}

/// Span names (OpenTelemetry). Use them as the name of a `tracing` span:
/// `tracing::info_span!(names::spans::PD_PROXY_REQUEST, ...)`.
pub mod spans {
    /// The load generator's client span for one request: the root of the request's trace
    /// (not in llm-d; every hop below continues it).
    pub const LOADGEN_REQUEST: &str = "llmd.loadgen.request";
    /// The gateway's server span for one request.
    pub const GATEWAY_REQUEST: &str = "gateway.request";
    /// The EPP's handling of one request's decision (parent of its scorer and pick spans; a
    /// child of the data plane's span).
    pub const EPP_REQUEST: &str = "llm_d.epp.request";
    /// Precise prefix-cache scoring of one request (per-pod matched blocks, total blocks).
    pub const EPP_SCORER_PREFIX_CACHE: &str = "llm_d.epp.scorer.prefix_cache";
    /// The profile handler's decision (decode-only or P/D) and chosen pods.
    pub const EPP_PROFILE_HANDLER_PICK: &str = "llm_d.epp.profile_handler.pick";
    /// The P/D proxy's span for a whole request, with the timing breakdown.
    pub const PD_PROXY_REQUEST: &str = "llm_d.pd_proxy.request";
    /// The prefill leg.
    pub const PD_PROXY_PREFILL: &str = "llm_d.pd_proxy.prefill";
    /// The decode leg.
    pub const PD_PROXY_DECODE: &str = "llm_d.pd_proxy.decode";
    /// The engine's (vLLM's or llmd-sim's) server span for one request.
    pub const LLM_REQUEST: &str = "llm_request";
}

/// Span attribute names.
pub mod attrs {
    /// Matched blocks per pod (`pod=blocks` list) on the prefix scorer span.
    pub const EPP_PREFIX_MATCHED_BLOCKS: &str = "llm_d.epp.prefix_cache.matched_blocks";
    /// Total request blocks on the prefix scorer span.
    pub const EPP_PREFIX_TOTAL_BLOCKS: &str = "llm_d.epp.prefix_cache.total_blocks";
    /// `decode-only` or `prefill-decode`.
    pub const EPP_DECISION: &str = "decision";
    /// Cache hit ratio of the best decode pod.
    pub const EPP_CACHE_HIT_RATIO: &str = "cache_hit_ratio";
    /// The P/D threshold in effect.
    pub const EPP_PD_THRESHOLD: &str = "pd_threshold";
    /// Bytes of user input.
    pub const EPP_USER_INPUT_BYTES: &str = "user_input_bytes";
    /// Chosen decode pod.
    pub const EPP_DECODE_POD: &str = "llm_d.epp.decode_pod";
    /// Chosen prefill pod.
    pub const EPP_PREFILL_POD: &str = "llm_d.epp.prefill_pod";

    /// Client-visible TTFT (ms).
    pub const PD_TRUE_TTFT_MS: &str = "llm_d.pd_proxy.true_ttft_ms";
    /// The proxy's own time (ms).
    pub const PD_COORDINATOR_OVERHEAD_MS: &str = "llm_d.pd_proxy.coordinator_overhead_ms";
    /// Prefill leg duration (ms).
    pub const PD_PREFILL_DURATION_MS: &str = "llm_d.pd_proxy.prefill_duration_ms";
    /// Decode leg duration (ms).
    pub const PD_DECODE_DURATION_MS: &str = "llm_d.pd_proxy.decode_duration_ms";
    /// Whole request (ms).
    pub const PD_TOTAL_DURATION_MS: &str = "llm_d.pd_proxy.total_duration_ms";
    /// Connector name.
    pub const PD_CONNECTOR: &str = "llm_d.pd_proxy.connector";
    /// Prefill target `host:port`.
    pub const PD_PREFILL_TARGET: &str = "llm_d.pd_proxy.prefill_target";
    /// Request id shared by both legs.
    pub const PD_REQUEST_ID: &str = "llm_d.pd_proxy.request_id";
    /// Decode leg start to its first token (ms).
    pub const PD_DECODE_TTFT_MS: &str = "llm_d.pd_proxy.decode_ttft_ms";
    /// The proxy's own time up to the first token (ms): `true_ttft = prefill_duration +
    /// this + decode_ttft` exactly (`coordinator_overhead_ms` covers the whole request).
    pub const PD_COORDINATOR_TTFT_MS: &str = "llm_d.pd_proxy.coordinator_to_first_token_ms";

    /// HTTP status of the response (an int, OpenTelemetry's semantic-convention name).
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// The endpoint the gateway forwarded to (`host:port`).
    pub const GATEWAY_DESTINATION: &str = "llmd.gateway.destination";
    /// How the response ended: `ok`, `cut` or `client_gone`.
    pub const GATEWAY_OUTCOME: &str = "llmd.gateway.outcome";
    /// Response body bytes sent to the client (an int).
    pub const GATEWAY_RESPONSE_BYTES: &str = "llmd.gateway.response_bytes";
    /// The request id (`x-request-id`).
    pub const GATEWAY_REQUEST_ID: &str = "llmd.gateway.request_id";

    /// vLLM `gen_ai.*` attributes on `llm_request` (latencies in seconds).
    pub const GEN_AI_REQUEST_ID: &str = "gen_ai.request.id";
    /// Model served.
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// Requested max tokens.
    pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    /// Prompt tokens.
    pub const GEN_AI_USAGE_PROMPT_TOKENS: &str = "gen_ai.usage.prompt_tokens";
    /// Completion tokens.
    pub const GEN_AI_USAGE_COMPLETION_TOKENS: &str = "gen_ai.usage.completion_tokens";
    /// Time to first token (s).
    pub const GEN_AI_LATENCY_TTFT: &str = "gen_ai.latency.time_to_first_token";
    /// Time in queue (s).
    pub const GEN_AI_LATENCY_TIME_IN_QUEUE: &str = "gen_ai.latency.time_in_queue";
    /// End-to-end (s).
    pub const GEN_AI_LATENCY_E2E: &str = "gen_ai.latency.e2e";
    /// Scheduled to first token (s).
    pub const GEN_AI_LATENCY_PREFILL: &str = "gen_ai.latency.time_in_model_prefill";
    /// First to last token (s).
    pub const GEN_AI_LATENCY_DECODE: &str = "gen_ai.latency.time_in_model_decode";
    /// Scheduled to last token (s).
    pub const GEN_AI_LATENCY_INFERENCE: &str = "gen_ai.latency.time_in_model_inference";
    /// Requested temperature.
    pub const GEN_AI_REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
    /// Requested top_p.
    pub const GEN_AI_REQUEST_TOP_P: &str = "gen_ai.request.top_p";
    /// Requested n.
    pub const GEN_AI_REQUEST_N: &str = "gen_ai.request.n";
    /// Finish reason(s) of the request.
    pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
}

/// Every metric of the contract, for tests and documentation.
pub fn all_metrics() -> impl Iterator<Item = &'static MetricDef> {
    epp::ALL
        .iter()
        .chain(kv_cache::ALL)
        .chain(pd_proxy::ALL)
        .chain(gateway::ALL)
        .chain(kubernetes::ALL)
        .chain(vllm::ALL)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for def in all_metrics() {
            assert!(seen.insert(def.name), "duplicate metric name {}", def.name);
            let valid = def.name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            });
            assert!(valid, "invalid Prometheus name {}", def.name);
            match def.kind {
                MetricKind::Counter => assert!(def.name.ends_with("_total"), "{}", def.name),
                MetricKind::Histogram => {
                    assert!(!def.buckets.is_empty(), "{} has no buckets", def.name);
                    assert!(
                        def.buckets.windows(2).all(|w| w[0] < w[1]),
                        "{} buckets",
                        def.name
                    );
                }
                MetricKind::Gauge => assert!(def.buckets.is_empty()),
            }
        }
    }

    #[test]
    fn pd_proxy_buckets_reach_down_to_ten_microseconds() {
        for def in pd_proxy::ALL
            .iter()
            .filter(|d| d.kind == MetricKind::Histogram)
        {
            assert_eq!(def.buckets[0], 0.01, "{}", def.name);
        }
    }

    #[test]
    fn one_two_five_buckets_match_vllm() {
        assert_eq!(
            vllm::buckets_1_2_5(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(vllm::buckets_1_2_5(4), vec![1.0, 2.0]);
        assert_eq!(vllm::buckets_1_2_5(0), Vec::<f64>::new());
        assert_eq!(vllm::buckets_1_2_5(u64::MAX).len(), 58);
        assert_eq!(vllm::buckets_1_2_5(131_072), vllm::TOKENS_1_2_5_BUCKETS);
    }
}
