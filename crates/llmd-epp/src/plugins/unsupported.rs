//! llm-d (and GIE) plugin types this EPP does not implement, each with the nearest supported
//! alternative: a configuration using one is refused at startup with that advice, never run
//! without it. `docs/coming-from-llm-d.md` lists the same table.

/// (type, what to use instead).
pub const UNSUPPORTED: &[(&str, &str)] = &[
    // Filters.
    (
        "label-selector-filter",
        "decode-filter / prefill-filter (pod roles from the llm-d.ai/role label)",
    ),
    (
        "by-label",
        "decode-filter / prefill-filter (pod roles from the llm-d.ai/role label)",
    ),
    (
        "by-label-selector",
        "decode-filter / prefill-filter (pod roles from the llm-d.ai/role label)",
    ),
    (
        "encode-filter",
        "none: encode disaggregation (E/P/D) is not supported",
    ),
    (
        "session-affinity-filter",
        "session-affinity-scorer (a soft preference: weight it above the other scorers to pin)",
    ),
    (
        "endpoint-attribute-filter",
        "decode-filter / prefill-filter",
    ),
    (
        "topology-affinity-filter",
        "none: topology-aware routing is not supported",
    ),
    (
        "utilization-filter",
        "utilization-detector (as a filter in the profile)",
    ),
    (
        "prefix-cache-affinity-filter",
        "prefix-cache-scorer or precise-prefix-cache-scorer",
    ),
    (
        "slo-headroom-tier-filter",
        "queue-scorer / load-aware-scorer",
    ),
    // Scorers.
    (
        "no-hit-lru-scorer",
        "max-score-picker (ties are broken at random)",
    ),
    (
        "context-length-aware",
        "none: context-length-aware routing is not supported",
    ),
    ("latency-scorer", "queue-scorer"),
    ("predicted-latency-scorer", "queue-scorer"),
    (
        "mm-embeddings-cache-scorer",
        "none: multimodal encoder-cache scoring is not supported",
    ),
    ("endpoint-attribute-scorer", "queue-scorer"),
    (
        "topology-affinity-scorer",
        "none: topology-aware routing is not supported",
    ),
    (
        "multicluster-prefix-cache-scorer",
        "prefix-cache-scorer (one cluster)",
    ),
    // Profile handlers and deciders.
    (
        "data-parallel-profile-handler",
        "single-profile-handler (list each data-parallel rank as its own endpoint)",
    ),
    (
        "header-profile-handler",
        "single-profile-handler or disagg-profile-handler",
    ),
    (
        "always-disagg-multimodal-decider",
        "none: encode disaggregation (E/P/D) is not supported",
    ),
    // Producers.
    (
        "session-id-producer",
        "session-affinity-scorer (strategy session_id, reading the id from a header)",
    ),
    ("predicted-latency-producer", "queue-scorer"),
    (
        "multicluster-approx-prefix-cache-producer",
        "approx-prefix-cache-producer",
    ),
    // Saturation detectors.
    // Parsers.
    (
        "anthropic-parser",
        "openai-parser (OpenAI completions and chat completions)",
    ),
    (
        "vllmhttp-parser",
        "openai-parser (OpenAI completions and chat completions)",
    ),
    (
        "vllmgrpc-parser",
        "openai-parser (OpenAI completions and chat completions)",
    ),
    (
        "sglanghttp-parser",
        "openai-parser (OpenAI completions and chat completions)",
    ),
    (
        "vertexai-parser",
        "openai-parser (OpenAI completions and chat completions)",
    ),
    (
        "passthrough-parser",
        "openai-parser (other paths are answered 400)",
    ),
    // Data layer.
    ("multicluster-metrics-data-source", "metrics-data-source"),
    ("multicluster-metrics-extractor", "core-metrics-extractor"),
    ("dcgm-data-source", "metrics-data-source"),
    // Request control.
    (
        "disaggregatedset-rollout-screener",
        "none: screeners are not supported",
    ),
];

/// The advice for an llm-d type this EPP lacks, if it is one.
pub fn nearest(kind: &str) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|(t, _)| *t == kind)
        .map(|(_, alt)| *alt)
}
