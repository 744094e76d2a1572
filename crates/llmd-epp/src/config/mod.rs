//! The scheduler configuration: llm-d's `EndpointPickerConfig`, in every shape llm-d's releases
//! and guides write it (`docs/coming-from-llm-d.md` maps each field):
//!
//! ```yaml
//! apiVersion: llm-d.ai/v1alpha1        # or inference.networking.x-k8s.io/v1alpha1
//! kind: EndpointPickerConfig
//! featureGates: [prepareDataPlugins]   # and flowControl: requests queue by priority and fairness
//! plugins:
//!   - type: precise-prefix-cache-scorer
//!     parameters:
//!       tokenProcessorConfig: {blockSize: 64, hashSeed: "42"}
//!       kvEventsConfig: {zmqEndpoint: "tcp://*:5557", topicFilter: "kv@"}
//!   - type: queue-scorer
//!   - type: decode-filter
//!   - type: prefill-filter
//!   - type: prefix-based-pd-decider
//!     parameters: {nonCachedTokens: 256}
//!   - type: disagg-profile-handler
//!     parameters: {deciders: {prefill: prefix-based-pd-decider}}
//! schedulingProfiles:
//!   - name: decode
//!     plugins:
//!       - {pluginRef: decode-filter}
//!       - {pluginRef: precise-prefix-cache-scorer, weight: 2}
//!       - {pluginRef: queue-scorer, weight: 1}
//!   - name: prefill
//!     plugins:
//!       - {pluginRef: prefill-filter}
//!       - {pluginRef: queue-scorer}
//! ```
//!
//! llm-d's loader defaults apply: no profiles → one `default` profile with every filter, scorer
//! and picker; a profile without a picker gets a `max-score-picker`; one profile and no handler
//! → `single-profile-handler`; a missing weight is 1. A plugin's `name` defaults to its `type`.
//! Every field is typed and unknown fields are refused, naming the field; what llm-d has and
//! this EPP does not is refused at startup naming the field and the nearest supported
//! alternative ([`sections`], [`crate::plugins::unsupported`]).
//!
//! Extensions of ours (not in llm-d): `inferenceObjectives` (priorities by objective name for
//! runs without a cluster; with one they are watched), the inline `saturationDetector` thresholds, and the plugin
//! parameters each plugin file lists as such.

pub mod sections;

use serde::Deserialize;
use serde_json::Value;

pub use sections::{
    DataLayer, FeatureGates, FlowControl, ObjectiveSpec, PluginRefOnly, RequestHandler,
    SaturationDetectorSpec, SaturationThresholds,
};

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
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPickerConfig {
    /// `llm-d.ai/v1alpha1` or the older `inference.networking.x-k8s.io/v1alpha1`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `EndpointPickerConfig`.
    #[serde(default)]
    pub kind: Option<String>,
    /// llm-d's feature gates (`name`, `name=true`, `name=false`).
    #[serde(default)]
    pub feature_gates: Vec<String>,
    /// Plugin instances.
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    /// Profiles (none: one `default` profile with every filter, scorer and picker).
    #[serde(default)]
    pub scheduling_profiles: Vec<ProfileSpec>,
    /// llm-d's data layer (metrics sources, endpoint notifications).
    #[serde(default)]
    pub data_layer: Option<DataLayer>,
    /// llm-d's flow control (takes effect with the `flowControl` gate: [`crate::flow_control`]).
    #[serde(default)]
    pub flow_control: Option<FlowControl>,
    /// Request parsers.
    #[serde(default)]
    pub request_handler: Option<RequestHandler>,
    /// The saturation detector behind shedding: llm-d's `{pluginRef: <utilization-detector>}`,
    /// or (ours) its thresholds inline. Absent: GIE's defaults.
    #[serde(default)]
    pub saturation_detector: Option<SaturationDetectorSpec>,
    /// llm-d's deprecated single parser (`{pluginRef}`), as `requestHandler.parsers`.
    #[serde(default)]
    pub parser: Option<PluginRefOnly>,
    /// Ours: InferenceObjectives by name and their priority (for runs without a cluster; with
    /// `--pool-name` the cluster's are watched and win). A request's objective comes from `x-llm-d-inference-objective` (or the older
    /// `x-gateway-inference-objective`), else an objective named like its model; unknown: 0.
    #[serde(default)]
    pub inference_objectives: Vec<ObjectiveSpec>,
}

/// The API versions llm-d's loader accepts.
pub const API_VERSIONS: &[&str] = &[
    "llm-d.ai/v1alpha1",
    "inference.networking.x-k8s.io/v1alpha1",
];

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
    /// Something llm-d has that this EPP does not (yet).
    #[error("unsupported scheduler config: {0}")]
    Unsupported(String),
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
    /// Parses YAML (or JSON) and checks the sections that need no plugin to be built
    /// (API version, feature gates, flow control).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The feature gates, resolved over llm-d's defaults.
    pub fn gates(&self) -> Result<FeatureGates, ConfigError> {
        FeatureGates::parse(&self.feature_gates)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(v) = &self.api_version
            && !API_VERSIONS.contains(&v.as_str())
        {
            return Err(ConfigError::Invalid(format!(
                "apiVersion {v:?} is not an EndpointPickerConfig version (expected one of {})",
                API_VERSIONS.join(", ")
            )));
        }
        if let Some(k) = &self.kind
            && k != "EndpointPickerConfig"
        {
            return Err(ConfigError::Invalid(format!(
                "kind {k:?}: expected EndpointPickerConfig"
            )));
        }
        let gates = self.gates()?;
        if let Some(fc) = &self.flow_control {
            fc.check(&gates)?;
        }
        // With the gate on, the section resolves now (bad values name their field).
        crate::flow_control::Settings::from_config(self)?;
        if self.parser.is_some()
            && self
                .request_handler
                .as_ref()
                .is_some_and(|r| !r.parsers.is_empty())
        {
            tracing::info!(
                "both parser and requestHandler.parsers are set: requestHandler.parsers is used (as llm-d does)"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for o in &self.inference_objectives {
            if !seen.insert(o.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "inferenceObjectives: {:?} is listed twice",
                    o.name
                )));
            }
        }
        Ok(())
    }

    /// The saturation detector's plugin name, when the config names one (top level, or
    /// `flowControl.saturationDetector`, which wins as in llm-d).
    pub fn saturation_detector_ref(&self) -> Option<&str> {
        let from_fc = self
            .flow_control
            .as_ref()
            .and_then(|f| f.saturation_detector.as_ref())
            .map(|r| r.plugin_ref.as_str());
        from_fc.or(match &self.saturation_detector {
            Some(SaturationDetectorSpec::Ref(r)) => Some(r.plugin_ref.as_str()),
            _ => None,
        })
    }

    /// The request parsers the config names (`requestHandler.parsers`, else `parser`).
    pub fn parser_refs(&self) -> Vec<&str> {
        match &self.request_handler {
            Some(r) if !r.parsers.is_empty() => {
                r.parsers.iter().map(|p| p.plugin_ref.as_str()).collect()
            }
            _ => self.parser.iter().map(|p| p.plugin_ref.as_str()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_kind_and_objectives_are_checked() {
        assert!(
            EndpointPickerConfig::parse(
                "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
            )
            .is_ok()
        );
        let e = EndpointPickerConfig::parse("apiVersion: v1\n").unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
        let e = EndpointPickerConfig::parse("kind: ConfigMap\n").unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        let e = EndpointPickerConfig::parse(
            "inferenceObjectives: [{name: a, priority: 1}, {name: a, priority: 2}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("inferenceObjectives"), "{e}");
        let e = EndpointPickerConfig::parse("schedulingProfile: []\n").unwrap_err();
        assert!(e.to_string().contains("schedulingProfile"), "{e}");
    }

    #[test]
    fn the_flow_control_saturation_detector_wins() {
        let c = EndpointPickerConfig::parse(
            "saturationDetector: {pluginRef: a}\nflowControl: {saturationDetector: {pluginRef: b}}\n",
        )
        .unwrap();
        assert_eq!(c.saturation_detector_ref(), Some("b"));
        let c = EndpointPickerConfig::parse("parser: {pluginRef: openai-parser}\n").unwrap();
        assert_eq!(c.parser_refs(), vec!["openai-parser"]);
    }
}
