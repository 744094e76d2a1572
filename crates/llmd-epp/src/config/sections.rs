//! The sections of llm-d's `EndpointPickerConfig` beside plugins and profiles: `featureGates`,
//! `flowControl`, `dataLayer`, `requestHandler`/`parser`, `saturationDetector`, and our
//! `inferenceObjectives`. Each is typed and refuses unknown fields; what this EPP does not do
//! is refused with what to use instead (flow control: "not implemented yet").

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::ConfigError;

/// `{pluginRef: name}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRefOnly {
    /// A plugin instance's name.
    pub plugin_ref: String,
}

/// A feature gate of llm-d (or GIE) and what it means here.
#[derive(Debug, Clone, Copy)]
struct Gate {
    name: &'static str,
    default: bool,
    /// `Some(why)`: enabling it is refused.
    refuse_on: Option<&'static str>,
    /// What it means here, logged when it is set.
    note: &'static str,
}

/// Every gate llm-d's releases registered.
const GATES: &[Gate] = &[
    Gate {
        name: "flowControl",
        default: false,
        refuse_on: None,
        note: "requests wait in the EPP's flow-control queue while the pool is saturated (crate::flow_control)",
    },
    Gate {
        name: "prepareDataPlugins",
        default: false,
        refuse_on: None,
        note: "data producers (tokenizer, prefix producers) always run before scoring here",
    },
    Gate {
        name: "dataLayer",
        default: false,
        refuse_on: None,
        note: "metrics are always scraped by the EPP's own data layer here",
    },
    Gate {
        name: "enableLegacyMetrics",
        default: false,
        refuse_on: None,
        note: "the GIE (legacy) metric names are always emitted here, beside llm_d_epp_*",
    },
    Gate {
        name: "haPopulateNonLeaderDatastore",
        default: true,
        refuse_on: None,
        note: "there is no leader election here: every replica follows the pool",
    },
];

/// The resolved feature gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureGates {
    /// `flowControl`.
    pub flow_control: bool,
}

impl FeatureGates {
    /// Resolves llm-d's gate list (`name`, `name=true`, `name=false`) over the defaults;
    /// unknown gates and enabled gates this EPP lacks are errors.
    pub fn parse(list: &[String]) -> Result<Self, ConfigError> {
        let mut out = FeatureGates::default();
        for entry in list {
            let (name, value) = match entry.split_once('=') {
                Some((n, v)) => {
                    let v = match v.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" | "t" => true,
                        "false" | "0" | "f" => false,
                        other => {
                            return Err(ConfigError::Invalid(format!(
                                "featureGates: {entry:?}: {other:?} is not true or false"
                            )));
                        }
                    };
                    (n.trim(), v)
                }
                None => (entry.trim(), true),
            };
            let Some(gate) = GATES.iter().find(|g| g.name == name) else {
                let known: Vec<&str> = GATES.iter().map(|g| g.name).collect();
                return Err(ConfigError::Invalid(format!(
                    "featureGates: unknown gate {name:?} (known: {})",
                    known.join(", ")
                )));
            };
            if value && let Some(why) = gate.refuse_on {
                return Err(ConfigError::Unsupported(format!(
                    "featureGates: {name}: {why}"
                )));
            }
            if !gate.note.is_empty() && value != gate.default {
                tracing::info!(gate = name, value, "feature gate: {}", gate.note);
            }
            if name == "flowControl" {
                out.flow_control = value;
            }
        }
        Ok(out)
    }
}

/// A Kubernetes quantity (`"1Gi"`, `500`) or duration (`"30s"`), kept as written here and
/// resolved by [`crate::flow_control::Settings`] (which names the field when it is bad).
pub type Opaque = Value;

/// llm-d's `flowControl` section (every field typed, unknown fields refused). It takes effect
/// with the `flowControl` gate ([`crate::flow_control`]); without it only its
/// `saturationDetector` is honoured, as in llm-d.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowControl {
    /// Global byte capacity.
    #[serde(default)]
    pub max_bytes: Option<Opaque>,
    /// Global request capacity.
    #[serde(default)]
    pub max_requests: Option<Opaque>,
    /// Default time a request may wait.
    #[serde(default, rename = "defaultRequestTTL")]
    pub default_request_ttl: Option<Opaque>,
    /// Time a request may wait while the pool has no endpoint.
    #[serde(default, rename = "noEndpointRequestTTL")]
    pub no_endpoint_request_ttl: Option<Opaque>,
    /// Band used for priorities without their own band.
    #[serde(default)]
    pub default_priority_band: Option<PriorityBand>,
    /// Band used for negative priorities without their own band.
    #[serde(default)]
    pub default_negative_priority_band: Option<PriorityBand>,
    /// Bands by priority.
    #[serde(default)]
    pub priority_bands: Vec<PriorityBand>,
    /// Usage-limit policy plugin.
    #[serde(default)]
    pub usage_limit_policy_plugin_ref: Option<String>,
    /// The saturation detector (wins over the top-level one).
    #[serde(default)]
    pub saturation_detector: Option<PluginRefOnly>,
    /// Evict dispatched requests under pressure.
    #[serde(default)]
    pub enable_eviction: bool,
}

/// One priority band of flow control.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriorityBand {
    /// The band's priority.
    #[serde(default)]
    pub priority: i64,
    /// Byte capacity.
    #[serde(default)]
    pub max_bytes: Option<Opaque>,
    /// Request capacity.
    #[serde(default)]
    pub max_requests: Option<Opaque>,
    /// Fairness policy plugin.
    #[serde(default)]
    pub fairness_policy_ref: Option<String>,
    /// Ordering policy plugin.
    #[serde(default)]
    pub ordering_policy_ref: Option<String>,
}

impl FlowControl {
    /// True when it sets anything beyond the saturation detector (llm-d's test for "these
    /// settings are ignored without the gate").
    pub fn has_settings(&self) -> bool {
        self.max_bytes.is_some()
            || self.max_requests.is_some()
            || self.default_request_ttl.is_some()
            || self.no_endpoint_request_ttl.is_some()
            || self.default_priority_band.is_some()
            || self.default_negative_priority_band.is_some()
            || !self.priority_bands.is_empty()
            || self.usage_limit_policy_plugin_ref.is_some()
            || self.enable_eviction
    }

    /// Checks it against the gates: with `flowControl` off its settings are ignored (logged,
    /// as llm-d does); with it on they are resolved by [`crate::flow_control::Settings`].
    pub fn check(&self, gates: &FeatureGates) -> Result<(), ConfigError> {
        if !gates.flow_control && self.has_settings() {
            tracing::warn!(
                "the flowControl section is set but the flowControl feature gate is off: its settings (other than saturationDetector) are ignored, as in llm-d"
            );
        }
        Ok(())
    }
}

/// llm-d's `dataLayer` section: which sources feed the endpoints' attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataLayer {
    /// Add llm-d's default sources (metrics scraping).
    #[serde(default)]
    pub inject_defaults: Option<bool>,
    /// Sources and their extractors.
    #[serde(default)]
    pub sources: Vec<DataLayerSource>,
    /// Endpoint discovery plugin (refused: `--endpoints-file` or `--pool-name`).
    #[serde(default)]
    pub discovery: Option<PluginRefOnly>,
    /// Peer discovery between EPP replicas (refused).
    #[serde(default)]
    pub peer_discovery: Option<PluginRefOnly>,
    /// Cross-replica state sync (refused).
    #[serde(default)]
    pub cross_replica_syncer_plugin_ref: Option<String>,
    /// Its interval.
    #[serde(default)]
    pub cross_replica_sync_interval: Option<Opaque>,
}

/// One data source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataLayerSource {
    /// The source plugin.
    pub plugin_ref: String,
    /// Its extractors.
    #[serde(default)]
    pub extractors: Vec<PluginRefOnly>,
}

impl DataLayer {
    /// What is refused, before plugins are looked at.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.discovery.is_some() {
            return Err(ConfigError::Unsupported(
                "dataLayer.discovery: endpoint discovery plugins are not supported; use --pool-name (an InferencePool) or --endpoints-file".into(),
            ));
        }
        if self.peer_discovery.is_some() || self.cross_replica_syncer_plugin_ref.is_some() {
            return Err(ConfigError::Unsupported(
                "dataLayer.peerDiscovery/crossReplicaSyncerPluginRef: EPP replicas share no state here; give each replica every pod's KV events (kvEventsConfig.discoverPods: true)".into(),
            ));
        }
        Ok(())
    }
}

/// `requestHandler`: the parsers, in order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestHandler {
    /// Parser plugins.
    #[serde(default)]
    pub parsers: Vec<PluginRefOnly>,
}

/// The saturation detector: llm-d's `{pluginRef}` to a `utilization-detector`, or (ours) its
/// thresholds inline.
#[derive(Debug, Clone, PartialEq)]
pub enum SaturationDetectorSpec {
    /// llm-d: a plugin instance.
    Ref(PluginRefOnly),
    /// Ours: the thresholds.
    Inline(SaturationThresholds),
}

impl<'de> Deserialize<'de> for SaturationDetectorSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let is_ref = v.get("pluginRef").is_some();
        if is_ref {
            serde_json::from_value(v)
                .map(SaturationDetectorSpec::Ref)
                .map_err(serde::de::Error::custom)
        } else {
            serde_json::from_value(v)
                .map(SaturationDetectorSpec::Inline)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// GIE's utilization saturation detector (`utilization-detector`): an endpoint's saturation
/// is `max(waiting / queueDepthThreshold, kvUsage / kvCacheUtilThreshold)`, 1.0 when its
/// metrics are older than `metricsStalenessThreshold`; the pool's is the mean over the
/// candidates (1.0 with none). As a filter it drops endpoints over `threshold × (1 +
/// headroom)` unless that drops them all.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SaturationThresholds {
    /// Waiting requests at which an endpoint counts as full (GIE default 5).
    pub queue_depth_threshold: f64,
    /// KV-cache usage (0..1] at which an endpoint counts as full (GIE default 0.8).
    pub kv_cache_util_threshold: f64,
    /// Metrics older than this count as full (GIE default 200ms; here never less than three
    /// scrape intervals, so a slower `--refresh-metrics-interval` does not read as saturated).
    #[serde(with = "humantime_serde::option")]
    pub metrics_staleness_threshold: Option<Duration>,
    /// Burst allowance of the filter (fraction, GIE default 0).
    pub headroom: f64,
}

impl Default for SaturationThresholds {
    fn default() -> Self {
        Self {
            queue_depth_threshold: 5.0,
            kv_cache_util_threshold: 0.8,
            metrics_staleness_threshold: None,
            headroom: 0.0,
        }
    }
}

/// GIE's default staleness threshold.
pub const DEFAULT_STALENESS: Duration = Duration::from_millis(200);

impl SaturationThresholds {
    /// GIE's validation.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.queue_depth_threshold.is_finite() && self.queue_depth_threshold > 0.0) {
            return Err(format!(
                "queueDepthThreshold must be strictly positive, got {}",
                self.queue_depth_threshold
            ));
        }
        if !(self.kv_cache_util_threshold > 0.0 && self.kv_cache_util_threshold <= 1.0) {
            return Err(format!(
                "kvCacheUtilThreshold must be in (0, 1], got {}",
                self.kv_cache_util_threshold
            ));
        }
        if self.metrics_staleness_threshold == Some(Duration::ZERO) {
            return Err("metricsStalenessThreshold must be positive".into());
        }
        if !(self.headroom.is_finite() && self.headroom >= 0.0) {
            return Err(format!("headroom must be >= 0, got {}", self.headroom));
        }
        Ok(())
    }

    /// The staleness threshold given the scrape interval.
    pub fn staleness(&self, scrape_interval: Duration) -> Duration {
        self.metrics_staleness_threshold
            .unwrap_or(DEFAULT_STALENESS)
            .max(scrape_interval * 3)
    }
}

/// One InferenceObjective (ours, in the config): its name and priority.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectiveSpec {
    /// The objective's name (what requests name in the objective header).
    pub name: String,
    /// Priority: higher is more important; below 0 is sheddable.
    #[serde(default)]
    pub priority: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(list: &[&str]) -> Result<FeatureGates, ConfigError> {
        FeatureGates::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn gates_follow_llm_d() {
        assert!(gates(&["prepareDataPlugins", "dataLayer=true"]).is_ok());
        assert!(!gates(&["flowControl=false"]).unwrap().flow_control);
        assert!(gates(&["flowControl"]).unwrap().flow_control);
        let e = gates(&["fastLane"]).unwrap_err().to_string();
        assert!(e.contains("fastLane") && e.contains("known"), "{e}");
        let e = gates(&["dataLayer=maybe"]).unwrap_err().to_string();
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn flow_control_is_accepted_with_or_without_its_gate() {
        let fc: FlowControl = serde_yaml_ng::from_str(
            "maxBytes: 1Gi\nmaxRequests: 500\ndefaultRequestTTL: 30s\npriorityBands: [{priority: 10, maxRequests: 100, orderingPolicyRef: fcfs}]\nsaturationDetector: {pluginRef: sd}\n",
        )
        .unwrap();
        assert!(fc.has_settings());
        assert!(fc.check(&FeatureGates::default()).is_ok());
        assert!(fc.check(&FeatureGates { flow_control: true }).is_ok());
        let e = serde_yaml_ng::from_str::<FlowControl>("maxByte: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxByte"), "{e}");
    }

    #[test]
    fn saturation_detector_by_ref_or_inline() {
        let r: SaturationDetectorSpec = serde_yaml_ng::from_str("pluginRef: sd\n").unwrap();
        assert_eq!(
            r,
            SaturationDetectorSpec::Ref(PluginRefOnly {
                plugin_ref: "sd".into()
            })
        );
        let i: SaturationDetectorSpec =
            serde_yaml_ng::from_str("queueDepthThreshold: 2\nmetricsStalenessThreshold: 2s\n")
                .unwrap();
        let SaturationDetectorSpec::Inline(t) = i else {
            panic!("inline")
        };
        assert_eq!(t.queue_depth_threshold, 2.0);
        assert_eq!(t.kv_cache_util_threshold, 0.8);
        assert_eq!(
            t.staleness(Duration::from_millis(50)),
            Duration::from_secs(2)
        );
        assert_eq!(
            SaturationThresholds::default().staleness(Duration::from_millis(50)),
            Duration::from_millis(200)
        );
        assert_eq!(
            SaturationThresholds::default().staleness(Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        let e = serde_yaml_ng::from_str::<SaturationDetectorSpec>("queueDepth: 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("queueDepth"), "{e}");
    }

    #[test]
    fn data_layer_refuses_what_is_not_here() {
        let d: DataLayer = serde_yaml_ng::from_str(
            "sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]\n",
        )
        .unwrap();
        assert!(d.check().is_ok());
        let d: DataLayer = serde_yaml_ng::from_str("peerDiscovery: {pluginRef: x}\n").unwrap();
        assert!(d.check().unwrap_err().to_string().contains("peerDiscovery"));
    }
}
