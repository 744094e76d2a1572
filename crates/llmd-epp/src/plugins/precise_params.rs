//! The parameters of the precise prefix cache (`precise-prefix-cache-scorer`, and llm-d's
//! newer `precise-prefix-cache-producer`), in both shapes:
//!
//! - ours (flat): `blockSize` (or `blockSizeTokens`), `hashSeed`, `hashAlgorithm`, `tokenizer`,
//!   `maxIndexBytes`, `loraAdapters`, `extraKeyStyle`;
//! - llm-d's (nested): `tokenProcessorConfig.{blockSize|blockSizeTokens, hashSeed,
//!   hashAlgorithm}`, `indexerConfig.{tokenizersPoolConfig, kvBlockIndexConfig,
//!   kvCacheBackendConfigs, prefixStoreConfig}`, `kvEventsConfig.{zmqEndpoint, topicFilter,
//!   concurrency, engineType, discoverPods, podDiscoveryConfig}`, `speculativeIndexing`,
//!   `speculativeTTL` (and our `speculativeWeight`, both shapes).
//!
//! Defaults follow the shape: the flat shape keeps ours (block 64, vLLM's `sha256_cbor` keys,
//! which need the engines' `PYTHONHASHSEED` and `--block-size`); the nested shape takes
//! llm-d's (block 16, `cbor-fnv` keys recomputed from the events' token ids, seed ""). Both
//! route the same when the engines' hashing matches; `cbor-fnv` also works when it does not.
//! `xxh64` (llm-d's other request-key hash) is read as `cbor-fnv`: the keys never leave this
//! EPP's index, so the choice of hash does not change a decision.
//!
//! Tokenisation is in-process (HuggingFace `tokenizers` and the model's chat template, as vLLM
//! renders it): a UDS tokenizer sidecar (`tokenizersPoolConfig.uds`, the `tokenizer` plugin's
//! `udsTokenizerConfig`) or a vLLM render URL is not called, and a startup message says so. The
//! tokenizer's model (`tokenizersPoolConfig.modelName`, the `tokenizer` plugin's `modelName`)
//! is honoured. An index shared through Redis/Valkey, other tier weights and SGLang events are
//! refused.
//!
//! `speculativeIndexing: true` makes every decision insert the prompt's block keys for the
//! chosen pods as provisional entries living `speculativeTTL` (2 s), so the requests that
//! follow within the KV events' delay find them ([`crate::speculative`]).
//!
//! `loraAdapters` (our extension; both shapes) lists the LoRA adapters the engines serve, as
//! vLLM's `--lora-modules name=path` does: a request whose `model` names one is keyed with the
//! adapter as vLLM keys it (`("lora", name, path)` on every block in vLLM >= 0.31, the bare name
//! in 0.20-0.29: `extraKeyStyle: tagged | untagged`), and tokenized with its base model's
//! tokenizer (`tokenizer` when set, else the adapter's `baseModel`). vLLM >= 0.31 hashes the
//! adapter's path, which KV events do not carry, so the path must be the one the engines were
//! started with.

use std::collections::HashSet;

use llmd_kv_index::hashing::ExtraKeyStyle;
use serde::Deserialize;
use serde_json::Value;

use super::precise_prefix_cache_scorer::HashAlgorithm;
use crate::config::{ConfigError, EndpointPickerConfig, PluginSpec};

/// The resolved parameters of the EPP's one precise index.
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisePrefixCacheParams {
    /// Tokens per block.
    pub block_size: usize,
    /// The seed of the key chain (the engines' `PYTHONHASHSEED` in `sha256_cbor` mode).
    pub hash_seed: Option<String>,
    /// How block keys are computed.
    pub hash_algorithm: HashAlgorithm,
    /// Tokenizer to use (path or model name) instead of the request's model.
    pub tokenizer: Option<String>,
    /// The index's memory budget, bytes.
    pub max_index_bytes: usize,
    /// How KV events arrive.
    pub kv_events: KvEventsSettings,
    /// The LoRA adapters the engines serve (`loraAdapters`).
    pub lora_adapters: Vec<LoraAdapter>,
    /// How the engines spell their extra keys (`extraKeyStyle`: vLLM >= 0.31 `tagged`).
    pub extra_key_style: ExtraKeyStyle,
    /// Speculative entries (`speculativeIndexing`), when on.
    pub speculative: Option<SpeculativeSettings>,
}

/// llm-d's `speculativeIndexing` / `speculativeTTL`, and our `speculativeWeight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeculativeSettings {
    /// How long a provisional entry lives without the pod's own event (`speculativeTTL`, 2 s).
    pub ttl: std::time::Duration,
    /// What a provisional block counts for against a confirmed one (`speculativeWeight`,
    /// 0..=1, default 1: llm-d scores them alike).
    pub weight: f64,
}

/// One LoRA adapter, as vLLM's `--lora-modules` names it (`loraAdapters[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoraAdapter {
    /// The adapter's name: a request's `model` (vLLM's `lora_name`).
    pub name: String,
    /// The adapter's path exactly as the engines were given it (`--lora-modules name=path`;
    /// vLLM's `lora_path`, hashed by vLLM >= 0.31).
    pub path: String,
    /// The base model, whose tokenizer the adapter's requests use when the scorer has no
    /// `tokenizer` (vLLM's `base_model_name`).
    #[serde(default)]
    pub base_model: Option<String>,
}

impl Default for PrecisePrefixCacheParams {
    fn default() -> Self {
        Self {
            block_size: 64,
            hash_seed: None,
            hash_algorithm: HashAlgorithm::default(),
            tokenizer: None,
            max_index_bytes: 512 << 20,
            kv_events: KvEventsSettings::default(),
            lora_adapters: Vec::new(),
            extra_key_style: ExtraKeyStyle::default(),
            speculative: None,
        }
    }
}

/// `kvEventsConfig`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventsSettings {
    /// `zmqEndpoint`: bind a SUB socket here; pods connect to it (else `--kv-events-bind`).
    pub bind: Option<String>,
    /// `topicFilter` (`kv@`).
    pub topic_filter: String,
    /// `concurrency`: workers applying a bound socket's events.
    pub workers: Option<usize>,
    /// `discoverPods`: dial each pod's publisher (`None`: not said; the endpoints decide).
    pub discover_pods: Option<bool>,
    /// `podDiscoveryConfig.socketPort` (5557).
    pub socket_port: u16,
    /// `podDiscoveryConfig.replaySocketPort` (0: no replay).
    pub replay_port: Option<u16>,
}

impl Default for KvEventsSettings {
    fn default() -> Self {
        Self {
            bind: None,
            topic_filter: "kv@".into(),
            workers: None,
            discover_pods: None,
            socket_port: 5557,
            replay_port: None,
        }
    }
}

/// What a precise prefix-cache plugin's `parameters` may hold (both shapes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    // Ours (flat).
    #[serde(alias = "blockSizeTokens")]
    block_size: Option<usize>,
    #[serde(default, deserialize_with = "string_or_number")]
    hash_seed: Option<String>,
    hash_algorithm: Option<HashAlgorithm>,
    tokenizer: Option<String>,
    max_index_bytes: Option<usize>,
    lora_adapters: Option<Vec<LoraAdapter>>,
    extra_key_style: Option<ExtraKeyStyle>,
    // llm-d's (nested).
    token_processor_config: Option<TokenProcessorConfig>,
    #[serde(alias = "kvCacheIndexerConfig")]
    indexer_config: Option<IndexerConfig>,
    kv_events_config: Option<KvEventsConfig>,
    speculative_indexing: Option<bool>,
    #[serde(rename = "speculativeTTL")]
    speculative_ttl: Option<Value>,
    /// Ours: what a provisional block counts for (0..=1).
    speculative_weight: Option<f64>,
    /// llm-d v0.2–v0.3 `prefix-cache-scorer`'s `mode: cache_tracking` (this shape).
    mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenProcessorConfig {
    #[serde(alias = "blockSizeTokens")]
    block_size: Option<usize>,
    #[serde(default, deserialize_with = "string_or_number")]
    hash_seed: Option<String>,
    hash_algorithm: Option<HashAlgorithm>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IndexerConfig {
    /// llm-d ≤ v0.3 kept the token processor here.
    token_processor_config: Option<TokenProcessorConfig>,
    tokenizers_pool_config: Option<TokenizersPoolConfig>,
    kv_block_index_config: Option<KvBlockIndexConfig>,
    kv_cache_backend_configs: Option<Vec<TierWeight>>,
    prefix_store_config: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenizersPoolConfig {
    model_name: Option<String>,
    workers_count: Option<u32>,
    hugging_face_token: Option<Value>,
    tokenizers_cache_dir: Option<Value>,
    min_prefix_overlap_ratio: Option<f64>,
    hf: Option<Value>,
    local: Option<Value>,
    uds: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KvBlockIndexConfig {
    in_memory_config: Option<Value>,
    cost_aware_memory_config: Option<CostAware>,
    redis_config: Option<Value>,
    valkey_config: Option<Value>,
    enable_metrics: Option<bool>,
    metrics_logging_interval: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CostAware {
    size: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TierWeight {
    name: String,
    weight: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KvEventsConfig {
    zmq_endpoint: Option<String>,
    topic_filter: Option<String>,
    concurrency: Option<usize>,
    engine_type: Option<String>,
    discover_pods: Option<bool>,
    pod_discovery_config: Option<PodDiscoveryConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PodDiscoveryConfig {
    pod_label_selector: Option<String>,
    pod_namespace: Option<String>,
    socket_port: Option<u16>,
    replay_socket_port: Option<u16>,
}

pub(crate) fn string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seed {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Option::<Seed>::deserialize(d)? {
        None => None,
        Some(Seed::S(s)) => Some(s),
        Some(Seed::N(n)) => Some(n.to_string()),
    })
}

/// Parses a memory size: bytes, or with a suffix (`Ki`, `Mi`, `Gi`, `KiB`, `MiB`, `GiB`, `K`,
/// `M`, `G`, `KB`, `MB`, `GB`).
pub fn parse_size(v: &Value) -> Result<usize, String> {
    if let Some(n) = v.as_u64() {
        return usize::try_from(n).map_err(|_| format!("{n} is too large"));
    }
    let s = v
        .as_str()
        .ok_or_else(|| format!("{v} is not a size"))?
        .trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "k" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("{s:?}: unknown unit {other:?}")),
    };
    let bytes = num * mult;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as usize)
}

fn unsupported(spec: &PluginSpec, field: &str, why: &str) -> ConfigError {
    ConfigError::Unsupported(format!(
        "plugin {:?} (type {}): parameters.{field}: {why}",
        spec.name(),
        spec.kind
    ))
}

fn invalid(spec: &PluginSpec, field: &str, why: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "plugin {:?} (type {}): parameters.{field}: {why}",
        spec.name(),
        spec.kind
    ))
}

/// The types of the `tokenizer` plugin (llm-d's `token-producer` and its older alias).
pub const TOKENIZER_TYPES: &[&str] = &["tokenizer", "token-producer"];

/// The `tokenizer` / `token-producer` plugin's parameters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenizerParams {
    /// The model whose tokenizer (and chat template) to use.
    pub model_name: Option<String>,
    /// The deprecated UDS sidecar (`socketFile`, ...): not called, tokenisation is in-process.
    pub uds_tokenizer_config: Option<Value>,
    /// vLLM's render endpoint (`url`, `timeout`, `mmTimeout`): not called.
    pub vllm: Option<Value>,
    /// The estimate backend's settings: not used, real tokens are always computed.
    pub estimate: Option<Value>,
}

/// The model the config's `tokenizer` plugins name, checked to agree.
fn tokenizer_plugin_model(config: &EndpointPickerConfig) -> Result<Option<String>, ConfigError> {
    let mut model: Option<String> = None;
    for spec in config
        .plugins
        .iter()
        .filter(|p| TOKENIZER_TYPES.contains(&p.kind.as_str()))
    {
        let p: TokenizerParams = super::registry::params(spec)?;
        if let Some(uds) = &p.uds_tokenizer_config {
            let socket = uds
                .get("socketFile")
                .and_then(Value::as_str)
                .unwrap_or("(default socket)");
            tracing::info!(
                plugin = spec.name(),
                socket,
                "udsTokenizerConfig: tokenisation is in-process here (HuggingFace tokenizers and the model's chat template); the UDS tokenizer sidecar is not called and can be removed"
            );
        }
        if p.vllm.is_some() {
            tracing::info!(
                plugin = spec.name(),
                "vllm render backend: tokenisation is in-process here, with the same tokenizer and chat template; the render URL is not called"
            );
        }
        match (&model, p.model_name) {
            (Some(a), Some(b)) if *a != b => {
                return Err(ConfigError::Invalid(format!(
                    "plugin {:?}: modelName {b:?} differs from another tokenizer plugin's {a:?} (one tokenizer per EPP)",
                    spec.name()
                )));
            }
            (None, Some(b)) => model = Some(b),
            _ => {}
        }
    }
    Ok(model)
}

/// Resolves one precise plugin's parameters against the whole config (its `tokenizer`
/// plugins).
pub fn resolve(
    spec: &PluginSpec,
    config: &EndpointPickerConfig,
) -> Result<PrecisePrefixCacheParams, ConfigError> {
    let s: Spec = super::registry::params(spec)?;
    let nested = s.token_processor_config.is_some()
        || s.indexer_config.is_some()
        || s.kv_events_config.is_some();
    let mut out = PrecisePrefixCacheParams::default();
    if nested {
        out.block_size = 16;
        out.hash_algorithm = HashAlgorithm::CborFnv;
        out.hash_seed = Some(String::new());
    }
    let ic = s.indexer_config.clone().unwrap_or_default();
    let tp = match (&s.token_processor_config, &ic.token_processor_config) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                spec,
                "tokenProcessorConfig",
                "set both at the top level and in indexerConfig",
            ));
        }
        (Some(t), None) | (None, Some(t)) => t.clone(),
        (None, None) => TokenProcessorConfig::default(),
    };
    for (flat, nested_set, field) in [
        (s.block_size.is_some(), tp.block_size.is_some(), "blockSize"),
        (s.hash_seed.is_some(), tp.hash_seed.is_some(), "hashSeed"),
        (
            s.hash_algorithm.is_some(),
            tp.hash_algorithm.is_some(),
            "hashAlgorithm",
        ),
    ] {
        if flat && nested_set {
            return Err(invalid(
                spec,
                field,
                &format!("set both at the top level and in tokenProcessorConfig.{field}"),
            ));
        }
    }
    if let Some(b) = s.block_size.or(tp.block_size) {
        if b == 0 {
            return Err(invalid(spec, "blockSize", "must be at least 1"));
        }
        out.block_size = b;
    }
    if let Some(seed) = s.hash_seed.or(tp.hash_seed) {
        out.hash_seed = Some(seed);
    }
    if let Some(a) = s.hash_algorithm.or(tp.hash_algorithm) {
        if a == HashAlgorithm::Xxh64 {
            tracing::info!(
                plugin = spec.name(),
                "hashAlgorithm xxh64 is read as cbor-fnv: request keys stay inside this EPP's index, so the hash does not change a decision"
            );
        }
        out.hash_algorithm = a.effective();
    }
    if let Some(b) = s.max_index_bytes {
        out.max_index_bytes = b;
    }
    out.tokenizer = s.tokenizer.clone();
    if let Some(tpc) = &ic.tokenizers_pool_config {
        if let Some(m) = &tpc.model_name {
            match &out.tokenizer {
                Some(t) if t != m => {
                    return Err(invalid(
                        spec,
                        "indexerConfig.tokenizersPoolConfig.modelName",
                        &format!("{m:?} differs from tokenizer {t:?}"),
                    ));
                }
                _ => out.tokenizer = Some(m.clone()),
            }
        }
        if let Some(uds) = &tpc.uds {
            let socket = uds
                .get("socketFile")
                .and_then(Value::as_str)
                .unwrap_or("(default socket)");
            tracing::info!(
                plugin = spec.name(),
                socket,
                "tokenizersPoolConfig.uds: tokenisation is in-process here (HuggingFace tokenizers and the model's chat template); the UDS tokenizer sidecar is not called and can be removed"
            );
        }
        if tpc.hf.is_some()
            || tpc.local.is_some()
            || tpc.tokenizers_cache_dir.is_some()
            || tpc.hugging_face_token.is_some()
        {
            tracing::info!(
                plugin = spec.name(),
                "tokenizersPoolConfig.hf/local: tokenizers are read from the HuggingFace cache (HF_HUB_CACHE, HF_TOKEN for downloads) or the path in `tokenizer`"
            );
        }
        let _ = (tpc.workers_count, tpc.min_prefix_overlap_ratio);
    }
    let _ = &ic.prefix_store_config;
    if let Some(kb) = &ic.kv_block_index_config {
        if kb.redis_config.is_some() || kb.valkey_config.is_some() {
            return Err(unsupported(
                spec,
                "indexerConfig.kvBlockIndexConfig.redisConfig",
                "an index shared through Redis/Valkey is not supported: each EPP keeps its own in-memory index (bounded by costAwareMemoryConfig.size or maxIndexBytes); give every replica every pod's events (kvEventsConfig.discoverPods: true)",
            ));
        }
        if let Some(size) = kb
            .cost_aware_memory_config
            .as_ref()
            .and_then(|c| c.size.as_ref())
        {
            if s.max_index_bytes.is_some() {
                return Err(invalid(
                    spec,
                    "indexerConfig.kvBlockIndexConfig.costAwareMemoryConfig.size",
                    "set together with maxIndexBytes",
                ));
            }
            out.max_index_bytes = parse_size(size).map_err(|e| {
                invalid(
                    spec,
                    "indexerConfig.kvBlockIndexConfig.costAwareMemoryConfig.size",
                    &e,
                )
            })?;
        }
        if kb.in_memory_config.is_some() {
            tracing::info!(
                plugin = spec.name(),
                max_index_bytes = out.max_index_bytes,
                "kvBlockIndexConfig.inMemoryConfig: the index is bounded in bytes here (maxIndexBytes or costAwareMemoryConfig.size), not in keys"
            );
        }
        let _ = (kb.enable_metrics, &kb.metrics_logging_interval);
    }
    if let Some(tiers) = &ic.kv_cache_backend_configs {
        let default = [
            TierWeight {
                name: "gpu".into(),
                weight: 1.0,
            },
            TierWeight {
                name: "cpu".into(),
                weight: 0.8,
            },
        ];
        let mut sorted = tiers.clone();
        sorted.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        if sorted
            .iter()
            .map(|t| (t.name.to_ascii_lowercase(), t.weight))
            .ne(default.iter().map(|t| (t.name.clone(), t.weight)))
        {
            return Err(unsupported(
                spec,
                "indexerConfig.kvCacheBackendConfigs",
                "tier weights other than llm-d's default (gpu 1.0, cpu 0.8) are not supported",
            ));
        }
    }
    if s.speculative_indexing == Some(true) {
        let ttl = match &s.speculative_ttl {
            None => std::time::Duration::from_secs(2),
            Some(Value::String(t)) => humantime_serde::re::humantime::parse_duration(t)
                .map_err(|e| invalid(spec, "speculativeTTL", &format!("{t:?}: {e}")))?,
            Some(other) => {
                return Err(invalid(
                    spec,
                    "speculativeTTL",
                    &format!("{other}: a duration such as \"2s\" or \"500ms\""),
                ));
            }
        };
        if ttl.is_zero() {
            return Err(invalid(spec, "speculativeTTL", "must be positive"));
        }
        let weight = s.speculative_weight.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&weight) {
            return Err(invalid(spec, "speculativeWeight", "must be within 0..=1"));
        }
        out.speculative = Some(SpeculativeSettings { ttl, weight });
    } else if s.speculative_ttl.is_some() || s.speculative_weight.is_some() {
        tracing::info!(
            plugin = spec.name(),
            "speculativeTTL/speculativeWeight are ignored: speculativeIndexing is off"
        );
    }
    if let Some(m) = &s.mode
        && m != "cache_tracking"
    {
        return Err(invalid(
            spec,
            "mode",
            &format!("{m:?}: these parameters are the precise cache's (mode cache_tracking)"),
        ));
    }
    if let Some(ke) = &s.kv_events_config {
        if let Some(engine) = &ke.engine_type
            && !engine.eq_ignore_ascii_case("vllm")
        {
            return Err(unsupported(
                spec,
                "kvEventsConfig.engineType",
                &format!("{engine:?}: only vLLM's KV events are decoded here (engineType: vllm)"),
            ));
        }
        let k = &mut out.kv_events;
        if let Some(ep) = &ke.zmq_endpoint {
            k.bind = Some(ep.clone());
        }
        if let Some(t) = &ke.topic_filter {
            k.topic_filter = t.clone();
        }
        if let Some(c) = ke.concurrency {
            if c == 0 {
                return Err(invalid(
                    spec,
                    "kvEventsConfig.concurrency",
                    "must be at least 1",
                ));
            }
            k.workers = Some(c);
        }
        // Not said: llm-d's current default (dial the pods) unless the config gives a
        // zmqEndpoint to bind (the older releases, which had no pod discovery).
        k.discover_pods = Some(ke.discover_pods.unwrap_or(ke.zmq_endpoint.is_none()));
        if let Some(pd) = &ke.pod_discovery_config {
            if let Some(p) = pd.socket_port {
                k.socket_port = p;
            }
            k.replay_port = pd.replay_socket_port.filter(|p| *p != 0);
            if pd.pod_label_selector.is_some() || pd.pod_namespace.is_some() {
                tracing::info!(
                    plugin = spec.name(),
                    "podDiscoveryConfig.podLabelSelector/podNamespace: the pods dialled are the pool's endpoints (--pool-name or --endpoints-file)"
                );
            }
        }
    }
    if let Some(model) = tokenizer_plugin_model(config)? {
        match &out.tokenizer {
            Some(t) if *t != model => {
                return Err(invalid(
                    spec,
                    "tokenizer",
                    &format!("{t:?} differs from the tokenizer plugin's modelName {model:?}"),
                ));
            }
            _ => out.tokenizer = Some(model),
        }
    }
    if let Some(style) = s.extra_key_style {
        out.extra_key_style = style;
    }
    let mut names = HashSet::new();
    for (i, a) in s.lora_adapters.iter().flatten().enumerate() {
        let field = |f: &str| format!("loraAdapters[{i}].{f}");
        if a.name.is_empty() {
            return Err(invalid(spec, &field("name"), "must not be empty"));
        }
        if a.path.is_empty() {
            return Err(invalid(
                spec,
                &field("path"),
                "must not be empty (the path the engines' --lora-modules give the adapter)",
            ));
        }
        if !names.insert(a.name.as_str()) {
            return Err(invalid(
                spec,
                &field("name"),
                &format!("{:?} is listed twice", a.name),
            ));
        }
        if a.base_model.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(spec, &field("baseModel"), "must not be empty"));
        }
        if out.tokenizer.is_none() && a.base_model.is_none() {
            return Err(invalid(
                spec,
                &field("baseModel"),
                "needed when the scorer has no `tokenizer`: the adapter's requests are tokenized with its base model's tokenizer",
            ));
        }
    }
    out.lora_adapters = s.lora_adapters.unwrap_or_default();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> EndpointPickerConfig {
        EndpointPickerConfig::parse(yaml).unwrap()
    }

    fn first(config: &EndpointPickerConfig) -> Result<PrecisePrefixCacheParams, ConfigError> {
        resolve(&config.plugins[0], config)
    }

    #[test]
    fn the_nested_shape_of_llm_d_guides() {
        // llm-d's precise guide (v0.8 era).
        let c = cfg(r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters:
      tokenProcessorConfig: {blockSize: 64, hashSeed: "42"}
      indexerConfig:
        tokenizersPoolConfig:
          modelName: Qwen/Qwen3-32B
          uds: {socketFile: /tmp/tokenizer/tokenizer-uds.socket}
        kvBlockIndexConfig: {enableMetrics: true}
      kvEventsConfig: {topicFilter: "kv@", concurrency: 4, discoverPods: false, zmqEndpoint: "tcp://*:5557"}
  - type: tokenizer
    parameters:
      modelName: Qwen/Qwen3-32B
      udsTokenizerConfig: {socketFile: /tmp/tokenizer/tokenizer-uds.socket}
"#);
        let p = first(&c).unwrap();
        assert_eq!(p.block_size, 64);
        assert_eq!(p.hash_seed.as_deref(), Some("42"));
        assert_eq!(p.hash_algorithm, HashAlgorithm::CborFnv);
        assert_eq!(p.tokenizer.as_deref(), Some("Qwen/Qwen3-32B"));
        assert_eq!(p.kv_events.bind.as_deref(), Some("tcp://*:5557"));
        assert_eq!(p.kv_events.discover_pods, Some(false));
        assert_eq!(p.kv_events.workers, Some(4));
        // llm-d's defaults when the nested shape leaves them out.
        let p = first(&cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {kvEventsConfig: {}}}]\n",
        ))
        .unwrap();
        assert_eq!((p.block_size, p.hash_seed.as_deref()), (16, Some("")));
        assert_eq!(p.kv_events.discover_pods, Some(true));
        assert_eq!(p.kv_events.socket_port, 5557);
        // Ours, flat, keeps its defaults.
        let p = first(&cfg("plugins: [{type: precise-prefix-cache-scorer}]\n")).unwrap();
        assert_eq!(p, PrecisePrefixCacheParams::default());
        // llm-d v0.3: the token processor inside indexerConfig (or kvCacheIndexerConfig).
        let p = first(&cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {kvCacheIndexerConfig: {tokenProcessorConfig: {blockSize: 32, hashSeed: '7'}, tokenizersPoolConfig: {workersCount: 8, tokenizersCacheDir: /tmp/t}}}}]\n",
        ))
        .unwrap();
        assert_eq!((p.block_size, p.hash_seed.as_deref()), (32, Some("7")));
    }

    #[test]
    fn what_is_refused_names_the_field() {
        for (params, field) in [
            (
                "{blockSize: 16, tokenProcessorConfig: {blockSize: 64}}",
                "blockSize",
            ),
            ("{tokenProcessorConfig: {blockSze: 64}}", "blockSze"),
            (
                "{indexerConfig: {kvBlockIndexConfig: {redisConfig: {address: 'redis://x'}}}}",
                "redisConfig",
            ),
            (
                "{indexerConfig: {kvCacheBackendConfigs: [{name: gpu, weight: 1.0}, {name: cpu, weight: 0.5}]}}",
                "kvCacheBackendConfigs",
            ),
            ("{kvEventsConfig: {engineType: sglang}}", "engineType"),
            (
                "{speculativeIndexing: true, speculativeTTL: soon}",
                "speculativeTTL",
            ),
            (
                "{speculativeIndexing: true, speculativeWeight: 2}",
                "speculativeWeight",
            ),
            (
                "{tokenizer: a, indexerConfig: {tokenizersPoolConfig: {modelName: b}}}",
                "modelName",
            ),
            (
                "{indexerConfig: {kvBlockIndexConfig: {costAwareMemoryConfig: {size: 2XB}}}}",
                "size",
            ),
        ] {
            let c = cfg(&format!(
                "plugins: [{{type: precise-prefix-cache-scorer, parameters: {params}}}]\n"
            ));
            let e = first(&c).unwrap_err().to_string();
            assert!(e.contains(field), "{params}: {e}");
        }
        let c = cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {tokenizer: a}}, {type: tokenizer, parameters: {modelName: b}}]\n",
        );
        assert!(first(&c).unwrap_err().to_string().contains("modelName"));
    }

    #[test]
    fn lora_adapters_and_the_extra_key_style() {
        let p = first(&cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {loraAdapters: [{name: sql, path: /adapters/sql, baseModel: meta-llama/Llama-3.1-8B}], extraKeyStyle: untagged}}]\n",
        ))
        .unwrap();
        assert_eq!(
            p.lora_adapters,
            vec![LoraAdapter {
                name: "sql".into(),
                path: "/adapters/sql".into(),
                base_model: Some("meta-llama/Llama-3.1-8B".into()),
            }]
        );
        assert_eq!(p.extra_key_style, ExtraKeyStyle::Untagged);
        // vLLM >= 0.31's tagged keys by default; the base model may come from `tokenizer`.
        let p = first(&cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {tokenizer: t, loraAdapters: [{name: sql, path: /a}]}}]\n",
        ))
        .unwrap();
        assert_eq!(p.extra_key_style, ExtraKeyStyle::Tagged);
        assert_eq!(p.lora_adapters[0].base_model, None);
        // Also beside llm-d's nested shape.
        let p = first(&cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {tokenProcessorConfig: {blockSize: 64}, loraAdapters: [{name: sql, path: /a, baseModel: b}]}}]\n",
        ))
        .unwrap();
        assert_eq!(p.lora_adapters.len(), 1);
        for (params, field) in [
            ("{loraAdapters: [{name: sql, pth: /a}]}", "pth"),
            ("{loraAdapters: [{name: sql}]}", "path"),
            ("{extraKeyStyle: tagd}", "tagd"),
            (
                "{loraAdapters: [{name: sql, path: /a}]}",
                "loraAdapters[0].baseModel",
            ),
            (
                "{tokenizer: t, loraAdapters: [{name: sql, path: /a}, {name: sql, path: /b}]}",
                "loraAdapters[1].name",
            ),
            (
                "{tokenizer: t, loraAdapters: [{name: sql, path: ''}]}",
                "loraAdapters[0].path",
            ),
        ] {
            let c = cfg(&format!(
                "plugins: [{{type: precise-prefix-cache-scorer, parameters: {params}}}]\n"
            ));
            let e = first(&c).unwrap_err().to_string();
            assert!(e.contains(field), "{params}: {e}");
        }
    }

    #[test]
    fn sizes_and_hash_algorithms() {
        assert_eq!(parse_size(&"2GiB".into()).unwrap(), 2 << 30);
        assert_eq!(parse_size(&"512Mi".into()).unwrap(), 512 << 20);
        assert_eq!(parse_size(&"1G".into()).unwrap(), 1_000_000_000);
        assert_eq!(parse_size(&serde_json::json!(4096)).unwrap(), 4096);
        assert!(parse_size(&"0".into()).is_err());
        let p = first(&cfg(
            "plugins: [{type: precise-prefix-cache-scorer, parameters: {tokenProcessorConfig: {hashAlgorithm: xxh64}, indexerConfig: {kvBlockIndexConfig: {costAwareMemoryConfig: {size: 1GiB}}}}}]\n",
        ))
        .unwrap();
        assert_eq!(p.hash_algorithm, HashAlgorithm::CborFnv);
        assert_eq!(p.max_index_bytes, 1 << 30);
    }
}
