//! The scheduler configuration, shaped like llm-d's `EndpointPickerConfig`:
//!
//! ```yaml
//! apiVersion: inference.networking.x-k8s.io/v1alpha1
//! kind: EndpointPickerConfig
//! plugins:
//!   - type: precise-prefix-cache-scorer
//!     parameters: {blockSize: 64, hashSeed: "42"}
//!   - type: queue-scorer
//!   - type: decode-filter
//!   - type: prefill-filter
//!   - type: max-score-picker
//!   - type: pd-profile-handler
//!     parameters: {threshold: 256}
//! schedulingProfiles:
//!   - name: decode
//!     plugins:
//!       - {pluginRef: decode-filter}
//!       - {pluginRef: precise-prefix-cache-scorer, weight: 2}
//!       - {pluginRef: queue-scorer, weight: 1}
//!       - {pluginRef: max-score-picker}
//!   - name: prefill
//!     plugins:
//!       - {pluginRef: prefill-filter}
//!       - {pluginRef: queue-scorer}
//!       - {pluginRef: max-score-picker}
//! ```
//!
//! A plugin's `name` defaults to its `type`. Validation at startup: unique names, every
//! `pluginRef` resolves, each profile has exactly one picker, at most one profile handler
//! (default `single-profile-handler` when there is one profile).

use serde::Deserialize;
use serde_json::Value;

/// One plugin instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    /// Plugin type (llm-d's names).
    #[serde(rename = "type")]
    pub kind: String,
    /// Instance name (default: the type).
    #[serde(default)]
    pub name: Option<String>,
    /// Type-specific parameters.
    #[serde(default)]
    pub parameters: Option<Value>,
}

impl PluginSpec {
    /// The instance name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.kind)
    }
}

/// A plugin used in a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRef {
    /// Name of a plugin instance.
    pub plugin_ref: String,
    /// Weight (scorers; default 1).
    #[serde(default)]
    pub weight: Option<f64>,
}

/// A scheduling profile: filters → weighted scorers → picker.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    /// Profile name.
    pub name: String,
    /// Plugins, in order.
    pub plugins: Vec<PluginRef>,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPickerConfig {
    /// Ignored (kept for llm-d compatibility).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Ignored (kept for llm-d compatibility).
    #[serde(default)]
    pub kind: Option<String>,
    /// Plugin instances.
    pub plugins: Vec<PluginSpec>,
    /// Profiles.
    pub scheduling_profiles: Vec<ProfileSpec>,
    /// Load shedding (GIE's saturation detector); absent: never shed.
    #[serde(default)]
    pub saturation_detector: Option<SaturationDetector>,
}

/// GIE's saturation detector: when every candidate pod is saturated, requests get 429.
///
/// A pod is saturated when its waiting queue reaches `queueDepthThreshold`, its KV-cache usage
/// reaches `kvCacheUtilThreshold`, or its metrics are older than `metricsStalenessThreshold`
/// (then nothing is known about it, and GIE does not trust it either).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaturationDetector {
    /// Waiting requests at which a pod is saturated (GIE default 5).
    #[serde(default = "default_queue_depth")]
    pub queue_depth_threshold: f64,
    /// KV-cache usage (0..1) at which a pod is saturated (GIE default 0.8).
    #[serde(default = "default_kv_util")]
    pub kv_cache_util_threshold: f64,
    /// Metrics older than this are not trusted (GIE's default is 200ms; ours follows the
    /// scrape interval, so the default here is 5s).
    #[serde(default = "default_staleness", with = "humantime_serde")]
    pub metrics_staleness_threshold: std::time::Duration,
}

fn default_queue_depth() -> f64 {
    5.0
}

fn default_kv_util() -> f64 {
    0.8
}

fn default_staleness() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// The default configuration: the precise prefix-cache scorer plus load, one decode profile.
pub const DEFAULT_CONFIG: &str = r#"
plugins:
  - type: precise-prefix-cache-scorer
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: precise-prefix-cache-scorer, weight: 2}
      - {pluginRef: queue-scorer, weight: 1}
      - {pluginRef: kv-cache-utilization-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"#;

/// The baseline every benchmark compares against: round-robin over the pool.
pub const ROUND_ROBIN_CONFIG: &str = r#"
plugins:
  - type: round-robin-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: round-robin-picker}
"#;

/// Errors of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid YAML for this schema.
    #[error("invalid scheduler config: {0}")]
    Parse(String),
    /// Valid YAML, invalid configuration.
    #[error("invalid scheduler config: {0}")]
    Invalid(String),
    /// Reading the file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl EndpointPickerConfig {
    /// Parses YAML (or JSON).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}
