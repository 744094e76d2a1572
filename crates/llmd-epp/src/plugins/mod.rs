//! Scheduler plugins, one file per llm-d plugin type, built by the [`registry`] from the
//! configuration. Each opens with its algorithm and its parameters (a typed struct that refuses
//! unknown fields, so a misspelt parameter is a startup error naming it).
//!
//! | type | kind | file |
//! |---|---|---|
//! | `precise-prefix-cache-scorer` | scorer (KV-event index) | `precise_prefix_cache_scorer.rs`, parameters in `precise_params.rs` |
//! | `prefix-cache-scorer` | scorer (precise via a producer, else approximate) | `prefix_cache_scorer.rs`, index in `approx_prefix.rs` |
//! | `queue-scorer` | scorer | `queue_scorer.rs` |
//! | `kv-cache-utilization-scorer` | scorer | `kv_cache_utilization_scorer.rs` |
//! | `load-aware-scorer` | scorer (llm-d's 0..0.5 range) | `load_aware_scorer.rs` |
//! | `running-requests-size-scorer` | scorer | `running_requests_size_scorer.rs` |
//! | `active-request-scorer` | scorer (the EPP's in-flight requests, [`crate::inflight`]) | `active_request_scorer.rs` |
//! | `token-load-scorer` | scorer (the EPP's in-flight prompt tokens) | `token_load_scorer.rs` |
//! | `session-affinity-scorer` | scorer (`x-session-token`, set on the response) | `session_affinity_scorer.rs` |
//! | `lora-affinity-scorer` | scorer (`vllm:lora_requests_info`) | `lora_affinity_scorer.rs`, scraped state in `crate::lora` |
//! | `decode-filter` | filter | `decode_filter.rs` |
//! | `prefill-filter` | filter | `prefill_filter.rs` |
//! | `utilization-detector` | saturation detector, filter | `utilization_detector.rs` |
//! | `concurrency-detector` | saturation detector, filter (the EPP's in-flight count) | `concurrency_detector.rs` |
//! | `max-score-picker` | picker | `max_score_picker.rs` |
//! | `random-picker` | picker | `random_picker.rs` |
//! | `weighted-random-picker` | picker | `weighted_random_picker.rs` |
//! | `round-robin-picker` | picker (ours, the benchmarks' baseline) | `round_robin_picker.rs` |
//! | `single-profile-handler` | profile handler | `single_profile_handler.rs` |
//! | `pd-profile-handler` | profile handler (llm-d's older P/D) | `pd_profile_handler.rs` |
//! | `disagg-profile-handler` | profile handler (llm-d's current P/D) | `disagg_profile_handler.rs` |
//! | `prefix-based-pd-decider` | P/D decider | `prefix_based_pd_decider.rs` |
//! | `always-disagg-pd-decider` | P/D decider | `always_disagg_pd_decider.rs` |
//! | `tokenizer`, `token-producer`, `precise-prefix-cache-producer`, `approx-prefix-cache-producer`, `inflight-load-producer`, `prefill-header-handler`, `disagg-headers-handler`, `metrics-data-source`, `core-metrics-extractor`, `endpoint-notification-source`, `openai-parser` | accepted, done elsewhere | `passive.rs` |
//!
//! The llm-d types this EPP lacks, with the nearest alternative each, are in `unsupported.rs`;
//! what the P/D handlers share is in `disagg.rs`.

pub mod active_request_scorer;
pub mod always_disagg_pd_decider;
pub mod approx_prefix;
pub mod concurrency_detector;
pub mod decode_filter;
pub mod disagg;
pub mod disagg_profile_handler;
pub mod kv_cache_utilization_scorer;
pub mod load_aware_scorer;
pub mod lora_affinity_scorer;
pub mod max_score_picker;
pub mod passive;
pub mod pd_profile_handler;
pub mod precise_params;
pub mod precise_prefix_cache_scorer;
pub mod prefill_filter;
pub mod prefix_based_pd_decider;
pub mod prefix_cache_scorer;
pub mod queue_scorer;
pub mod random_picker;
pub mod registry;
pub mod round_robin_picker;
pub mod running_requests_size_scorer;
pub mod session_affinity_scorer;
pub mod single_profile_handler;
pub mod token_load_scorer;
pub mod unsupported;
pub mod utilization_detector;
pub mod weighted_random_picker;

/// The types whose parameters configure the EPP's precise index.
pub const PRECISE_TYPES: &[&str] = &[
    precise_prefix_cache_scorer::TYPE,
    "precise-prefix-cache-producer",
];

/// True when a plugin's parameters configure the precise index: a precise type, or llm-d
/// v0.2–v0.3's `prefix-cache-scorer` with `mode: cache_tracking`.
pub fn is_precise(spec: &crate::config::PluginSpec) -> bool {
    PRECISE_TYPES.contains(&spec.kind.as_str())
        || (spec.kind == prefix_cache_scorer::TYPE
            && spec
                .parameters
                .as_ref()
                .and_then(|p| p.get("mode"))
                .and_then(|m| m.as_str())
                == Some("cache_tracking"))
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::endpoints::{Endpoint, Load};

/// Default age past which a pod's scraped load is not trusted (`staleAfterSeconds`).
pub(crate) const STALE_AFTER_SECONDS: f64 = 5.0;

/// Each candidate's load, when the scrape is fresher than `max_age`, corrected by the EPP's
/// own decisions since ([`Endpoint::current_load`]).
pub(crate) fn loads(candidates: &[Endpoint], max_age: Duration) -> Vec<Option<Load>> {
    candidates.iter().map(|e| e.current_load(max_age)).collect()
}

/// `staleAfterSeconds` as a duration (negative: 0).
pub(crate) fn stale_after(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

/// A small lock-free generator (SplitMix64) for the pickers' random choices and tie breaks.
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        Self(AtomicU64::new(seed))
    }

    pub(crate) fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
pub(crate) fn test_endpoint(port: u16) -> Endpoint {
    Endpoint::new(crate::endpoints::EndpointSpec {
        address: "10.0.0.1".into(),
        port,
        role: crate::endpoints::Role::Both,
        model: vec![],
        kv_events: None,
        kv_events_replay: None,
        metrics_port: None,
    })
}

/// The profile handler's `llm_d.epp.profile_handler.pick` span (decision, cache hit ratio,
/// threshold, user input bytes and the chosen pods are recorded on it as they are known).
pub(crate) fn pick_span(
    cs: &crate::scheduling::CycleState<'_>,
    threshold: Option<u64>,
) -> tracing::Span {
    let span = tracing::info_span!(
        llmd_telemetry::names::spans::EPP_PROFILE_HANDLER_PICK,
        service.name = tracing::field::Empty,
        decision = tracing::field::Empty,
        cache_hit_ratio = tracing::field::Empty,
        pd_threshold = tracing::field::Empty,
        user_input_bytes = cs
            .request
            .map_or(0, |r| i64::try_from(r.user_input_bytes).unwrap_or(i64::MAX)),
        llm_d.epp.decode_pod = tracing::field::Empty,
        llm_d.epp.prefill_pod = tracing::field::Empty,
    );
    cs.name_service(&span);
    if let Some(t) = threshold {
        span.record("pd_threshold", i64::try_from(t).unwrap_or(i64::MAX));
    }
    span
}

/// The prompt's tokens and how many of them `endpoint` holds (from the precise prefix scorer's
/// match, else the approximate one's; without either, the prompt is estimated at 4 bytes a
/// token and nothing is cached).
pub(crate) fn cached_on(cs: &crate::scheduling::CycleState<'_>, endpoint: &str) -> (u64, u64) {
    match cs.prefix.as_ref().or(cs.approx_prefix.as_ref()) {
        Some(p) => (
            p.prompt_tokens as u64,
            u64::from(*p.matched.get(endpoint).unwrap_or(&0)) * p.block_size as u64,
        ),
        None => (cs.request.map_or(0, |r| r.user_input_bytes / 4) as u64, 0),
    }
}

/// Records the chosen pod's cache hit ratio on the pick span.
pub(crate) fn record_hit_ratio(span: &tracing::Span, prompt_tokens: u64, cached_tokens: u64) {
    if prompt_tokens > 0 {
        span.record(
            "cache_hit_ratio",
            cached_tokens.min(prompt_tokens) as f64 / prompt_tokens as f64,
        );
    }
}
