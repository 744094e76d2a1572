//! llm-d's `flowControl` section resolved: capacities as numbers, TTLs as durations, each band's
//! fairness and ordering policy checked against the plugins it names. Every error names the
//! field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::config::sections::PriorityBand;
use crate::config::{ConfigError, EndpointPickerConfig, FlowControl};

/// GIE's default byte capacity of a band (1 GB).
pub const DEFAULT_BAND_MAX_BYTES: u64 = 1_000_000_000;
/// llm-d's default `defaultRequestTTL` and `noEndpointRequestTTL`.
pub const DEFAULT_REQUEST_TTL: Duration = Duration::from_secs(60);

/// GIE's fairness policies (which flow of a band is served next).
pub const ROUND_ROBIN: &str = "round-robin-fairness-policy";
/// The oldest request of the band first, whatever its flow (GIE's default).
pub const GLOBAL_STRICT: &str = "global-strict-fairness-policy";
/// GIE's ordering policy within a flow: first come, first served (the default and only one
/// here).
pub const FCFS: &str = "fcfs-ordering-policy";
/// llm-d's priority-aware usage-limit policy: lower bands get lower saturation ceilings.
pub const PRIORITY_HOLDBACK: &str = "priority-holdback-policy";
/// llm-d's uniform usage-limit policy: one ceiling for every band (`threshold`, default 1.0).
pub const STATIC_USAGE_LIMIT: &str = "static-usage-limit-policy";
/// The plugin types flow control owns (accepted in `plugins:`; see
/// [`crate::plugins::passive`]).
pub const PLUGIN_TYPES: &[&str] = &[
    ROUND_ROBIN,
    GLOBAL_STRICT,
    FCFS,
    PRIORITY_HOLDBACK,
    STATIC_USAGE_LIMIT,
];

/// How long a priority counts as active for the usage-limit policy after its last request
/// (GIE's idle-flow collection period).
pub const ACTIVE_PRIORITY_WINDOW: Duration = Duration::from_secs(300);

/// A usage-limit policy: the saturation ceiling under which each band may dispatch.
#[derive(Debug, Clone, PartialEq)]
pub enum UsageLimit {
    /// One ceiling for every band (`static-usage-limit-policy`; 1.0 by default: no gating).
    Static(f64),
    /// `priority-holdback-policy`: the highest active priority gets `max`, the lowest `min`,
    /// the others between, by rank (`stepwise-spread`) or by value (`linear-proportional`).
    Holdback {
        /// Space the ceilings by the priorities' values (else by their rank).
        by_value: bool,
        /// The lowest priority's ceiling.
        min: f64,
        /// The highest priority's ceiling.
        max: f64,
    },
}

impl Default for UsageLimit {
    fn default() -> Self {
        UsageLimit::Static(1.0)
    }
}

impl UsageLimit {
    /// The ceiling of `priority` among the active priorities (sorted highest first; it is
    /// one of them).
    pub fn ceiling(&self, priority: i32, active: &[i32]) -> f64 {
        match *self {
            UsageLimit::Static(t) => t,
            UsageLimit::Holdback { by_value, min, max } => {
                if active.len() < 2 {
                    return max;
                }
                if by_value {
                    let (hi, lo) = (active[0], active[active.len() - 1]);
                    if hi == lo {
                        return max;
                    }
                    let r = f64::from(priority - lo) / f64::from(hi - lo);
                    min + r * (max - min)
                } else {
                    let i = active.iter().position(|p| *p == priority).unwrap_or(0);
                    max - i as f64 * (max - min) / (active.len() - 1) as f64
                }
            }
        }
    }

    /// From a `priority-holdback-policy` or `static-usage-limit-policy` plugin's parameters.
    pub fn from_plugin(
        kind: &str,
        params: Option<&Value>,
        field: &str,
    ) -> Result<Self, ConfigError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Holdback {
            #[serde(default)]
            strategy: Option<String>,
            #[serde(default)]
            shape: Option<String>,
            #[serde(default)]
            domain: Option<String>,
            #[serde(default)]
            min_ceiling: Option<f64>,
            #[serde(default)]
            max_ceiling: Option<f64>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Static {
            #[serde(default)]
            threshold: Option<f64>,
        }
        let bad = |m: String| ConfigError::Invalid(format!("{field}: {m}"));
        let params = match params {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(v) => v.clone(),
        };
        match kind {
            STATIC_USAGE_LIMIT => {
                let p: Static = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
                let t = p.threshold.unwrap_or(1.0);
                if !(t > 0.0 && t <= 1.0) {
                    return Err(bad(format!("threshold must be in (0, 1], got {t}")));
                }
                Ok(UsageLimit::Static(t))
            }
            PRIORITY_HOLDBACK => {
                let p: Holdback = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
                let by_value = match (
                    p.strategy.as_deref(),
                    p.shape.as_deref(),
                    p.domain.as_deref(),
                ) {
                    (Some("stepwise-spread"), None, None) => false,
                    (Some("linear-proportional"), None, None) => true,
                    (None, None | Some("linear"), Some("rank")) => false,
                    (None, None | Some("linear"), Some("value")) => true,
                    _ => {
                        return Err(bad(
                            "strategy must be stepwise-spread or linear-proportional (or shape: linear with domain: rank or value)".into(),
                        ));
                    }
                };
                let min = p
                    .min_ceiling
                    .ok_or_else(|| bad("minCeiling is required".into()))?;
                let max = p.max_ceiling.unwrap_or(1.0);
                if !((0.0..1.0).contains(&min) && max > 0.0 && max <= 1.0 && min <= max) {
                    return Err(bad(format!(
                        "minCeiling must be in [0, 1), maxCeiling in (0, 1] and not below it; got {min}, {max}"
                    )));
                }
                Ok(UsageLimit::Holdback { by_value, min, max })
            }
            other => Err(ConfigError::Unsupported(format!(
                "{field}: {other} is not a supported usage-limit policy (use {PRIORITY_HOLDBACK} or {STATIC_USAGE_LIMIT})"
            ))),
        }
    }
}

/// Which flow of a band is served next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fairness {
    /// Flows in turn, one request each (`round-robin-fairness-policy`).
    RoundRobin,
    /// The band's oldest request, whatever its flow (`global-strict-fairness-policy`, GIE's
    /// default).
    GlobalStrict,
}

/// One band's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandSettings {
    /// Requests the band may hold (`None`: no limit).
    pub max_requests: Option<u64>,
    /// Bytes the band may hold.
    pub max_bytes: u64,
    /// Its fairness policy.
    pub fairness: Fairness,
}

impl Default for BandSettings {
    fn default() -> Self {
        Self {
            max_requests: None,
            max_bytes: DEFAULT_BAND_MAX_BYTES,
            fairness: Fairness::GlobalStrict,
        }
    }
}

/// The resolved section.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Requests the queue may hold in all (`None`: no global limit).
    pub max_requests: Option<u64>,
    /// Bytes the queue may hold in all (`None`: no global limit).
    pub max_bytes: Option<u64>,
    /// How long a request may wait while the pool has endpoints (`None`: no limit).
    pub request_ttl: Option<Duration>,
    /// How long a request may wait while the pool has none (`None`: no limit).
    pub no_endpoint_ttl: Option<Duration>,
    /// Bands configured by priority.
    pub bands: BTreeMap<i32, BandSettings>,
    /// The band of a priority ≥ 0 with no band of its own.
    pub default_band: BandSettings,
    /// The band of a priority < 0 with no band of its own.
    pub default_negative_band: BandSettings,
    /// The usage-limit policy (`usageLimitPolicyPluginRef`; none: every band up to 1.0).
    pub usage_limit: UsageLimit,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_requests: None,
            max_bytes: None,
            request_ttl: Some(DEFAULT_REQUEST_TTL),
            no_endpoint_ttl: Some(DEFAULT_REQUEST_TTL),
            bands: BTreeMap::new(),
            default_band: BandSettings::default(),
            default_negative_band: BandSettings::default(),
            usage_limit: UsageLimit::default(),
        }
    }
}

impl Settings {
    /// The section's settings when the `flowControl` gate is on; `None` when it is off.
    pub fn from_config(config: &EndpointPickerConfig) -> Result<Option<Self>, ConfigError> {
        if !config.gates()?.flow_control {
            return Ok(None);
        }
        let section = config.flow_control.clone().unwrap_or_default();
        Self::resolve(&section, config).map(Some)
    }

    fn resolve(fc: &FlowControl, config: &EndpointPickerConfig) -> Result<Self, ConfigError> {
        let mut usage_limit = UsageLimit::default();
        if let Some(r) = &fc.usage_limit_policy_plugin_ref {
            let field = "flowControl.usageLimitPolicyPluginRef";
            usage_limit = match config.plugins.iter().find(|p| p.name() == r) {
                Some(p) => UsageLimit::from_plugin(
                    &p.kind,
                    p.parameters.as_ref(),
                    &format!("{field} ({r:?})"),
                )?,
                None if r == STATIC_USAGE_LIMIT => UsageLimit::default(),
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "{field}: no plugin named {r:?} (declare a {PRIORITY_HOLDBACK} or {STATIC_USAGE_LIMIT})"
                    )));
                }
            };
        }
        if fc.enable_eviction {
            return Err(ConfigError::Unsupported(
                "flowControl.enableEviction: evicting dispatched requests is not supported; requests are only ever shed while queued".into(),
            ));
        }
        let nonzero = |v: u64| (v > 0).then_some(v);
        let mut s = Settings {
            max_requests: opt(
                fc.max_requests.as_ref(),
                "flowControl.maxRequests",
                quantity,
            )?
            .and_then(nonzero),
            max_bytes: opt(fc.max_bytes.as_ref(), "flowControl.maxBytes", quantity)?
                .and_then(nonzero),
            request_ttl: ttl(
                fc.default_request_ttl.as_ref(),
                "flowControl.defaultRequestTTL",
            )?,
            no_endpoint_ttl: ttl(
                fc.no_endpoint_request_ttl.as_ref(),
                "flowControl.noEndpointRequestTTL",
            )?,
            usage_limit,
            ..Default::default()
        };
        if let Some(b) = &fc.default_priority_band {
            s.default_band = band(b, "flowControl.defaultPriorityBand", config)?;
        }
        s.default_negative_band = match &fc.default_negative_priority_band {
            Some(b) => band(b, "flowControl.defaultNegativePriorityBand", config)?,
            None => s.default_band.clone(),
        };
        for (i, b) in fc.priority_bands.iter().enumerate() {
            let field = format!("flowControl.priorityBands[{i}]");
            let priority = i32::try_from(b.priority).map_err(|_| {
                ConfigError::Invalid(format!("{field}.priority: {} is out of range", b.priority))
            })?;
            let settings = band(b, &field, config)?;
            if s.bands.insert(priority, settings).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{field}.priority: priority {priority} has two bands"
                )));
            }
        }
        Ok(s)
    }

    /// The band settings of a priority.
    pub fn band(&self, priority: i32) -> &BandSettings {
        match self.bands.get(&priority) {
            Some(b) => b,
            None if priority < 0 => &self.default_negative_band,
            None => &self.default_band,
        }
    }
}

fn opt<T>(
    v: Option<&Value>,
    field: &str,
    parse: fn(&Value, &str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    v.map(|v| parse(v, field)).transpose()
}

/// A TTL: absent is llm-d's default (60 s), zero is no limit.
fn ttl(v: Option<&Value>, field: &str) -> Result<Option<Duration>, ConfigError> {
    match v {
        None => Ok(Some(DEFAULT_REQUEST_TTL)),
        Some(v) => {
            let d = duration(v, field)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn band(
    b: &PriorityBand,
    field: &str,
    config: &EndpointPickerConfig,
) -> Result<BandSettings, ConfigError> {
    let mut out = BandSettings::default();
    if let Some(v) = &b.max_requests {
        out.max_requests = Some(quantity(v, &format!("{field}.maxRequests"))?).filter(|n| *n > 0);
    }
    if let Some(v) = &b.max_bytes {
        let n = quantity(v, &format!("{field}.maxBytes"))?;
        if n > 0 {
            out.max_bytes = n;
        }
    }
    if let Some(r) = &b.fairness_policy_ref {
        out.fairness = match policy_type(r, config) {
            ROUND_ROBIN => Fairness::RoundRobin,
            GLOBAL_STRICT => Fairness::GlobalStrict,
            other => {
                return Err(ConfigError::Unsupported(format!(
                    "{field}.fairnessPolicyRef: {r:?} ({other}) is not a supported fairness policy (use {ROUND_ROBIN} or {GLOBAL_STRICT})"
                )));
            }
        };
    }
    if let Some(r) = &b.ordering_policy_ref
        && policy_type(r, config) != FCFS
    {
        return Err(ConfigError::Unsupported(format!(
            "{field}.orderingPolicyRef: {r:?} is not a supported ordering policy (use {FCFS})"
        )));
    }
    Ok(out)
}

/// The type of the plugin a policy ref names: a listed plugin's type, else the ref itself (a
/// policy type named directly).
fn policy_type<'a>(r: &'a str, config: &'a EndpointPickerConfig) -> &'a str {
    config
        .plugins
        .iter()
        .find(|p| p.name() == r)
        .map_or(r, |p| p.kind.as_str())
}

/// A Kubernetes quantity (`500`, `"1Gi"`, `"512M"`, `"1.5k"`) as a whole number, rounded up.
pub fn quantity(v: &Value, field: &str) -> Result<u64, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("{field}: {v} {why}"));
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| bad("is not a non-negative whole number")),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let (num, suffix) = s.split_at(split);
            let mult: f64 = match suffix {
                "" => 1.0,
                "k" => 1e3,
                "M" => 1e6,
                "G" => 1e9,
                "T" => 1e12,
                "P" => 1e15,
                "Ki" => 1024.0,
                "Mi" => 1024f64.powi(2),
                "Gi" => 1024f64.powi(3),
                "Ti" => 1024f64.powi(4),
                "Pi" => 1024f64.powi(5),
                _ => return Err(bad("is not a quantity (e.g. 500, \"1Gi\", \"512M\")")),
            };
            let n: f64 = num
                .parse()
                .map_err(|_| bad("is not a quantity (e.g. 500, \"1Gi\", \"512M\")"))?;
            let total = (n * mult).ceil();
            if !(total.is_finite() && total >= 0.0 && total < u64::MAX as f64) {
                return Err(bad("is out of range"));
            }
            Ok(total as u64)
        }
        _ => Err(bad("is not a quantity (e.g. 500, \"1Gi\", \"512M\")")),
    }
}

/// A Go-style duration (`"30s"`, `"1m30s"`, `"500ms"`).
pub fn duration(v: &Value, field: &str) -> Result<Duration, ConfigError> {
    match v {
        Value::String(s) => humantime_serde::re::humantime::parse_duration(s.trim()).map_err(|e| {
            ConfigError::Invalid(format!(
                "{field}: {s:?} is not a duration such as \"30s\": {e}"
            ))
        }),
        other => Err(ConfigError::Invalid(format!(
            "{field}: {other} is not a duration such as \"30s\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdback_ceilings_by_rank_and_by_value() {
        let rank = UsageLimit::Holdback {
            by_value: false,
            min: 0.4,
            max: 1.0,
        };
        let active = [100, 10, -5];
        let c: Vec<f64> = active.iter().map(|p| rank.ceiling(*p, &active)).collect();
        assert!(
            (c[1] - 0.7).abs() < 1e-9 && c[0] == 1.0 && (c[2] - 0.4).abs() < 1e-9,
            "{c:?}"
        );
        let value = UsageLimit::Holdback {
            by_value: true,
            min: 0.0,
            max: 1.0,
        };
        assert!((value.ceiling(10, &[100, 10, 0]) - 0.1).abs() < 1e-9);
        // A single active priority gets the highest ceiling.
        assert_eq!(rank.ceiling(-5, &[-5]), 1.0);
        let s = settings(
            "featureGates: [flowControl]\nplugins: [{type: priority-holdback-policy, name: h, parameters: {shape: linear, domain: rank, minCeiling: 0.5}}]\nflowControl: {usageLimitPolicyPluginRef: h}\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.usage_limit,
            UsageLimit::Holdback {
                by_value: false,
                min: 0.5,
                max: 1.0
            }
        );
    }

    fn settings(yaml: &str) -> Result<Option<Settings>, ConfigError> {
        let c: EndpointPickerConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Settings::from_config(&c)
    }

    #[test]
    fn off_without_the_gate_and_llm_d_defaults_with_it() {
        assert_eq!(settings("flowControl: {maxRequests: 5}\n").unwrap(), None);
        let s = settings("featureGates: [flowControl]\n").unwrap().unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.request_ttl, Some(Duration::from_secs(60)));
        assert_eq!(s.band(7).max_bytes, 1_000_000_000);
        assert_eq!(s.band(-3).fairness, Fairness::GlobalStrict);
    }

    #[test]
    fn the_section_resolves_quantities_durations_and_policies() {
        let s = settings(
            "featureGates: [flowControl]\nplugins: [{type: round-robin-fairness-policy, name: rr}, {type: fcfs-ordering-policy}]\nflowControl:\n  maxBytes: 1Gi\n  maxRequests: \"2k\"\n  defaultRequestTTL: 1m30s\n  noEndpointRequestTTL: 0s\n  defaultNegativePriorityBand: {maxRequests: 3}\n  priorityBands:\n    - {priority: 10, maxRequests: 100, maxBytes: 512M, fairnessPolicyRef: rr, orderingPolicyRef: fcfs-ordering-policy}\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.max_bytes, Some(1 << 30));
        assert_eq!(s.max_requests, Some(2000));
        assert_eq!(s.request_ttl, Some(Duration::from_secs(90)));
        assert_eq!(s.no_endpoint_ttl, None);
        let b = s.band(10);
        assert_eq!(
            (b.max_requests, b.max_bytes, b.fairness),
            (Some(100), 512_000_000, Fairness::RoundRobin)
        );
        assert_eq!(s.band(-1).max_requests, Some(3));
        assert_eq!(s.band(0).max_requests, None);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("flowControl: {maxBytes: 1Gb}", "flowControl.maxBytes"),
            (
                "flowControl: {defaultRequestTTL: soon}",
                "flowControl.defaultRequestTTL",
            ),
            (
                "flowControl: {priorityBands: [{priority: 1}, {priority: 1}]}",
                "flowControl.priorityBands[1].priority",
            ),
            (
                "flowControl: {priorityBands: [{priority: 1, fairnessPolicyRef: vtc-fairness-policy}]}",
                "flowControl.priorityBands[0].fairnessPolicyRef",
            ),
            (
                "flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: edf-ordering-policy}]}",
                "flowControl.priorityBands[0].orderingPolicyRef",
            ),
            (
                "flowControl: {enableEviction: true}",
                "flowControl.enableEviction",
            ),
            (
                "flowControl: {usageLimitPolicyPluginRef: x}",
                "flowControl.usageLimitPolicyPluginRef",
            ),
            (
                "plugins: [{type: priority-holdback-policy, name: h, parameters: {strategy: stepwise-spread, minCeling: 0.5}}]\nflowControl: {usageLimitPolicyPluginRef: h}",
                "minCeling",
            ),
            (
                "plugins: [{type: priority-holdback-policy, name: h, parameters: {strategy: stepwise-spread}}]\nflowControl: {usageLimitPolicyPluginRef: h}",
                "minCeiling is required",
            ),
        ];
        for (yaml, field) in cases {
            let e = settings(&format!("featureGates: [flowControl]\n{yaml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
    }
}
