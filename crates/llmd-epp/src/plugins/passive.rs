//! llm-d plugin types that are accepted (their parameters typed and checked) but have no work
//! of their own to do in a profile here, because another part of this EPP does it:
//!
//! | type | what does its work here |
//! |---|---|
//! | `tokenizer`, `token-producer` | the KV service tokenises in-process; `modelName` is honoured ([`super::precise_params`]) |
//! | `precise-prefix-cache-producer` | the KV service (its parameters configure it); `prefix-cache-scorer` reads it |
//! | `approx-prefix-cache-producer` | the `prefix-cache-scorer` that names it keeps the approximate index |
//! | `prefill-header-handler`, `disagg-headers-handler` | the profile handler sets `x-prefiller-host-port` |
//! | `metrics-data-source`, `core-metrics-extractor` | the EPP's scraper (`--refresh-metrics-interval`, the metric flags) |
//! | `endpoint-notification-source` | the KV-event subscriptions follow the pool's endpoints |
//! | `openai-parser` | the request parser (OpenAI completions and chat completions) |
//! | `round-robin-fairness-policy`, `global-strict-fairness-policy`, `fcfs-ordering-policy`, `priority-holdback-policy`, `static-usage-limit-policy` | flow control names them ([`crate::flow_control`]) |
//! | `inflight-load-producer` | the EPP's in-flight count ([`crate::inflight`]), always kept: uncached prompt tokens, released at the first streamed chunk; requests released at the end |
//!
//! A plugin of these types may be listed in a profile (llm-d's precise guide lists `tokenizer`
//! there); it is skipped when the profile runs.

use serde::Deserialize;
use serde_json::Value;

use crate::config::{ConfigError, PluginSpec};

/// The passive types ([`build`] accepts exactly these).
pub const TYPES: &[&str] = &[
    "tokenizer",
    "token-producer",
    "precise-prefix-cache-producer",
    "approx-prefix-cache-producer",
    "prefill-header-handler",
    "disagg-headers-handler",
    "metrics-data-source",
    "core-metrics-extractor",
    "endpoint-notification-source",
    "openai-parser",
    "inflight-load-producer",
    "round-robin-fairness-policy",
    "global-strict-fairness-policy",
    "fcfs-ordering-policy",
    "priority-holdback-policy",
    "static-usage-limit-policy",
];

/// What a passive plugin stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passive {
    /// Tokenisation.
    Tokenizer,
    /// A precise prefix-cache producer.
    PreciseProducer,
    /// An approximate prefix-cache producer.
    ApproxProducer,
    /// Sets the prefill header.
    PreRequestHeaders,
    /// A data-layer source or extractor.
    DataLayer,
    /// A request parser.
    Parser,
    /// A flow-control fairness or ordering policy.
    FlowControlPolicy,
}

/// `prefill-header-handler` / `disagg-headers-handler` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderHandlerParams {
    prefill_profile: Option<String>,
    encode_profile: Option<String>,
}

/// `metrics-data-source` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricsSourceParams {
    scheme: Option<String>,
    path: Option<String>,
    insecure_skip_verify: Option<bool>,
    ca_cert_path: Option<String>,
    client_cert_path: Option<String>,
    client_key_path: Option<String>,
    interval: Option<Value>,
}

/// `inflight-load-producer` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InFlightProducerParams {
    add_estimated_output_tokens: Option<bool>,
    max_estimated_output_tokens: Option<i64>,
    prefix_match_info_producer_name: Option<String>,
    track_streaming_output_tokens: Option<bool>,
    output_token_headroom: Option<i64>,
}

/// `core-metrics-extractor` parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExtractorParams {
    engine_label_key: Option<String>,
    default_engine: Option<String>,
    engine_configs: Option<Vec<Value>>,
}

fn refuse(spec: &PluginSpec, field: &str, why: &str) -> ConfigError {
    ConfigError::Unsupported(format!(
        "plugin {:?} (type {}): parameters.{field}: {why}",
        spec.name(),
        spec.kind
    ))
}

/// Checks a passive plugin's parameters; `None` when the type is not a passive one.
pub fn build(spec: &PluginSpec) -> Option<Result<Passive, ConfigError>> {
    use super::registry::params;
    let kind = spec.kind.as_str();
    let r = match kind {
        "tokenizer" | "token-producer" => {
            params::<super::precise_params::TokenizerParams>(spec).map(|_| Passive::Tokenizer)
        }
        "precise-prefix-cache-producer" => Ok(Passive::PreciseProducer),
        "approx-prefix-cache-producer" => {
            params::<super::prefix_cache_scorer::ApproxProducerParams>(spec)
                .map(|_| Passive::ApproxProducer)
        }
        "prefill-header-handler" | "disagg-headers-handler" => {
            params::<HeaderHandlerParams>(spec).and_then(|p| {
                if p.encode_profile.is_some() {
                    return Err(refuse(
                        spec,
                        "encodeProfile",
                        "encode disaggregation (E/P/D) is not supported",
                    ));
                }
                let _ = p.prefill_profile;
                Ok(Passive::PreRequestHeaders)
            })
        }
        "metrics-data-source" => params::<MetricsSourceParams>(spec).and_then(|p| {
            if p.scheme.as_deref().is_some_and(|s| s != "http") {
                return Err(refuse(
                    spec,
                    "scheme",
                    "model-server metrics are scraped over plain HTTP here",
                ));
            }
            if p.path.as_deref().is_some_and(|s| s != "/metrics") {
                return Err(refuse(
                    spec,
                    "path",
                    "model-server metrics are scraped at /metrics here",
                ));
            }
            if p.ca_cert_path.is_some() || p.client_cert_path.is_some() || p.client_key_path.is_some()
            {
                return Err(refuse(
                    spec,
                    "caCertPath",
                    "TLS to model-server metrics is not supported",
                ));
            }
            if p.interval.is_some() {
                tracing::info!(
                    plugin = spec.name(),
                    "metrics-data-source interval: pods are scraped every --refresh-metrics-interval here"
                );
            }
            let _ = p.insecure_skip_verify;
            Ok(Passive::DataLayer)
        }),
        "core-metrics-extractor" => params::<ExtractorParams>(spec).and_then(|p| {
            if p.default_engine.as_deref().is_some_and(|e| e != "vllm")
                || p.engine_configs.as_ref().is_some_and(|c| !c.is_empty())
            {
                return Err(refuse(
                    spec,
                    "engineConfigs",
                    "only vLLM's metrics are read here; name other metrics with --total-queued-requests-metric, --total-running-requests-metric and --kv-cache-usage-percentage-metric",
                ));
            }
            let _ = p.engine_label_key;
            Ok(Passive::DataLayer)
        }),
        "endpoint-notification-source" => Ok(Passive::DataLayer),
        "openai-parser" => Ok(Passive::Parser),
        "priority-holdback-policy" | "static-usage-limit-policy" => {
            crate::flow_control::settings::UsageLimit::from_plugin(
                kind,
                spec.parameters.as_ref(),
                &format!("plugin {:?} parameters", spec.name()),
            )
            .map(|_| Passive::FlowControlPolicy)
        }
        "round-robin-fairness-policy" | "global-strict-fairness-policy" | "fcfs-ordering-policy" => {
            match &spec.parameters {
                None | Some(Value::Null) => Ok(Passive::FlowControlPolicy),
                Some(Value::Object(m)) if m.is_empty() => Ok(Passive::FlowControlPolicy),
                Some(_) => Err(refuse(spec, "", "this policy takes no parameters")),
            }
        }
        "inflight-load-producer" => params::<InFlightProducerParams>(spec).and_then(|p| {
            if p.add_estimated_output_tokens == Some(true) || p.max_estimated_output_tokens.is_some()
            {
                return Err(refuse(
                    spec,
                    "addEstimatedOutputTokens",
                    "estimated output tokens are not counted here (no outlen-bucket plugin); the in-flight tokens are the uncached prompt tokens",
                ));
            }
            if p.track_streaming_output_tokens == Some(true) || p.output_token_headroom.is_some() {
                return Err(refuse(
                    spec,
                    "trackStreamingOutputTokens",
                    "streamed output tokens are not tracked here",
                ));
            }
            let _ = p.prefix_match_info_producer_name;
            Ok(Passive::DataLayer)
        }),
        _ => return None,
    };
    Some(r)
}
