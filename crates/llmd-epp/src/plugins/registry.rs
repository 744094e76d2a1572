//! The plugin registry: one row per llm-d plugin type (how to build it from its parameters),
//! and the assembly of a configuration's plugins into scheduling profiles with llm-d's loader
//! defaults (no profiles → one `default` profile with every filter, scorer and picker; a
//! profile without a picker gets a `max-score-picker`; one profile and no handler →
//! `single-profile-handler`; a missing weight is 1).
//!
//! Parameters are read into each plugin's typed struct, which refuses unknown fields: a
//! misspelt `blockSize` is a startup error naming the plugin, its type and the field, never a
//! silent default. A type llm-d has and this EPP lacks is refused with the nearest supported
//! alternative ([`super::unsupported`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::passive::{self, Passive};
use super::{
    active_request_scorer, always_disagg_pd_decider, approx_prefix::ApproxIndex,
    concurrency_detector, decode_filter, disagg_profile_handler, kv_cache_utilization_scorer,
    load_aware_scorer, lora_affinity_scorer, max_score_picker, pd_profile_handler,
    precise_prefix_cache_scorer, prefill_filter, prefix_based_pd_decider, prefix_cache_scorer,
    queue_scorer, random_picker, round_robin_picker, running_requests_size_scorer,
    session_affinity_scorer, single_profile_handler, token_load_scorer, unsupported,
    utilization_detector, weighted_random_picker,
};
use crate::config::{ConfigError, EndpointPickerConfig, PluginSpec, SaturationDetectorSpec};
use crate::endpoints::Pool;
use crate::kv::KvService;
use crate::scheduling::profile::PluginId;
use crate::scheduling::saturation::UtilizationDetector;
use crate::scheduling::{Decider, Filter, Pick, Profile, ProfileHandler, Profiles, Scorer};

/// A built plugin.
#[derive(Clone)]
pub enum Plugin {
    /// Filter.
    Filter(Arc<dyn Filter>),
    /// Scorer.
    Scorer(Arc<dyn Scorer>),
    /// Picker.
    Picker(Arc<dyn Pick>),
    /// Profile handler.
    Handler(Arc<dyn ProfileHandler>),
    /// P/D decider.
    Decider(Arc<dyn Decider>),
    /// Saturation detector (a filter when listed in a profile).
    Detector(Arc<utilization_detector::UtilizationDetectorPlugin>),
    /// Accepted; another part of the EPP does its work.
    Passive(Passive),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plugin::Filter(_) => f.write_str("Plugin::Filter"),
            Plugin::Scorer(_) => f.write_str("Plugin::Scorer"),
            Plugin::Picker(_) => f.write_str("Plugin::Picker"),
            Plugin::Handler(_) => f.write_str("Plugin::Handler"),
            Plugin::Decider(_) => f.write_str("Plugin::Decider"),
            Plugin::Detector(_) => f.write_str("Plugin::Detector"),
            Plugin::Passive(p) => write!(f, "Plugin::Passive({p:?})"),
        }
    }
}

/// What building the plugins may use beyond their parameters.
#[derive(Debug, Default, Clone)]
pub struct BuildEnv {
    /// The EPP's KV service (present when the configuration has a precise prefix plugin).
    pub kv: Option<Arc<KvService>>,
    /// How often the pods are scraped (the saturation detector's staleness follows it).
    pub scrape_interval: Option<Duration>,
    /// The pool (the approximate prefix index forgets pods that left it).
    pub pool: Option<Arc<Pool>>,
    /// The load scorers' `staleAfterSeconds` when they do not set it
    /// (`--metrics-staleness-threshold`).
    pub stale_after: Option<Duration>,
}

/// One build: the environment, the whole config (plugins refer to each other by name), the
/// plugins built so far, and the approximate indexes shared by producer name.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The environment.
    pub env: &'a BuildEnv,
    /// The configuration.
    pub config: &'a EndpointPickerConfig,
    built: HashMap<String, (String, Plugin)>,
    approx: RefCell<HashMap<String, Arc<ApproxIndex>>>,
}

impl Ctx<'_> {
    /// A plugin built earlier (deciders, for the handlers): its type and the plugin.
    pub fn plugin(&self, name: &str) -> Option<&(String, Plugin)> {
        self.built.get(name)
    }

    /// The spec of the plugin named `name`.
    pub fn spec(&self, name: &str) -> Option<&PluginSpec> {
        self.config.plugins.iter().find(|p| p.name() == name)
    }

    /// The approximate index of producer (or scorer) `name`, created on first use.
    fn approx_index(&self, name: &str) -> Arc<ApproxIndex> {
        self.approx
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn scrape_interval(&self) -> Duration {
        self.env.scrape_interval.unwrap_or(Duration::from_secs(1))
    }

    /// `--metrics-staleness-threshold` for a load scorer that does not set
    /// `staleAfterSeconds`.
    fn stale_after(&self, spec: &PluginSpec) -> Option<f64> {
        let set = spec
            .parameters
            .as_ref()
            .and_then(|p| p.get("staleAfterSeconds"))
            .is_some();
        (!set)
            .then_some(self.env.stale_after)
            .flatten()
            .map(|d| d.as_secs_f64())
    }
}

/// Builds one plugin from its spec.
type Build = fn(&PluginSpec, &Ctx<'_>) -> Result<Plugin, ConfigError>;

/// One plugin type.
#[derive(Debug)]
pub struct PluginType {
    /// llm-d's type name.
    pub name: &'static str,
    /// How to build it.
    pub build: Build,
    /// Built after every other plugin (handlers: they refer to deciders).
    pub late: bool,
}

const fn row(name: &'static str, build: Build) -> PluginType {
    PluginType {
        name,
        build,
        late: false,
    }
}

const fn late(name: &'static str, build: Build) -> PluginType {
    PluginType {
        name,
        build,
        late: true,
    }
}

fn decider(spec: &PluginSpec, ctx: &Ctx<'_>, name: &str) -> Result<Arc<dyn Decider>, ConfigError> {
    match ctx.plugin(name) {
        Some((_, Plugin::Decider(d))) => Ok(d.clone()),
        Some((kind, _)) => Err(invalid_params(
            spec,
            &format!(
                "{name:?} is a {kind}, not a P/D decider (prefix-based-pd-decider, always-disagg-pd-decider)"
            ),
        )),
        None => Err(invalid_params(
            spec,
            &format!("no decider plugin named {name:?} is declared"),
        )),
    }
}

/// Every plugin type this EPP builds (the passive ones are in [`passive`]).
pub const TYPES: &[PluginType] = &[
    row(precise_prefix_cache_scorer::TYPE, |spec, ctx| {
        // The parameters configure the KV service (checked when it was built).
        let kv = ctx.env.kv.clone().ok_or_else(|| {
            ConfigError::Invalid(format!("plugin {:?}: no KV service", spec.name()))
        })?;
        Ok(Plugin::Scorer(Arc::new(
            precise_prefix_cache_scorer::PrecisePrefixCacheScorer::new(kv),
        )))
    }),
    row(prefix_cache_scorer::TYPE, |spec, ctx| {
        if super::is_precise(spec) {
            // llm-d ≤ v0.3's `mode: cache_tracking`: the precise cache (its parameters
            // configured the KV service).
            let kv = ctx.env.kv.clone().ok_or_else(|| {
                ConfigError::Invalid(format!("plugin {:?}: no KV service", spec.name()))
            })?;
            return Ok(Plugin::Scorer(Arc::new(
                precise_prefix_cache_scorer::PrecisePrefixCacheScorer::new(kv),
            )));
        }
        let p: prefix_cache_scorer::Params = params(spec)?;
        if p.mode.as_deref().is_some_and(|m| m != "estimate") {
            return Err(invalid_params(
                spec,
                &format!(
                    "mode {:?}: estimate (approximate) or cache_tracking (precise)",
                    p.mode.as_deref().unwrap_or_default()
                ),
            ));
        }
        let ml = p.match_length().map_err(|e| invalid_params(spec, &e))?;
        let (approx, index_name) = match &p.prefix_match_info_producer_name {
            Some(producer) => {
                let Some(pspec) = ctx.spec(producer) else {
                    return Err(invalid_params(
                        spec,
                        &format!("prefixMatchInfoProducerName: no plugin named {producer:?}"),
                    ));
                };
                if super::PRECISE_TYPES.contains(&pspec.kind.as_str()) {
                    if p.sets_approx() {
                        return Err(invalid_params(
                            spec,
                            "the approximate-cache settings (blockSize, lruCapacityPerServer, ...) do not apply to a precise producer",
                        ));
                    }
                    let kv = ctx.env.kv.clone().ok_or_else(|| {
                        ConfigError::Invalid(format!("plugin {:?}: no KV service", spec.name()))
                    })?;
                    return Ok(Plugin::Scorer(Arc::new(
                        precise_prefix_cache_scorer::PrecisePrefixCacheScorer::new(kv)
                            .with_match_length(ml),
                    )));
                }
                if pspec.kind != prefix_cache_scorer::APPROX_PRODUCER_TYPE {
                    return Err(invalid_params(
                        spec,
                        &format!(
                            "prefixMatchInfoProducerName {producer:?} is a {}, not a prefix-cache producer",
                            pspec.kind
                        ),
                    ));
                }
                let pp: prefix_cache_scorer::ApproxProducerParams = params(pspec)?;
                (
                    prefix_cache_scorer::ApproxParams::from(pp),
                    producer.clone(),
                )
            }
            None => (p.approx(), spec.name().to_owned()),
        };
        let settings = approx.settings().map_err(|e| invalid_params(spec, &e))?;
        Ok(Plugin::Scorer(Arc::new(
            prefix_cache_scorer::ApproxPrefixCacheScorer::new(
                spec.name(),
                settings,
                ml,
                ctx.approx_index(&index_name),
                ctx.env.pool.clone(),
            ),
        )))
    }),
    row(queue_scorer::TYPE, |spec, ctx| {
        let mut p: queue_scorer::Params = params(spec)?;
        if let Some(s) = ctx.stale_after(spec) {
            p.stale_after_seconds = s;
        }
        Ok(Plugin::Scorer(Arc::new(queue_scorer::QueueScorer::new(p))))
    }),
    row(kv_cache_utilization_scorer::TYPE, |spec, ctx| {
        let mut p: kv_cache_utilization_scorer::Params = params(spec)?;
        if let Some(s) = ctx.stale_after(spec) {
            p.stale_after_seconds = s;
        }
        Ok(Plugin::Scorer(Arc::new(
            kv_cache_utilization_scorer::KvCacheUtilizationScorer::new(p),
        )))
    }),
    row(load_aware_scorer::TYPE, |spec, ctx| {
        let mut p: load_aware_scorer::Params = params(spec)?;
        if let Some(s) = ctx.stale_after(spec) {
            p.stale_after_seconds = s;
        }
        Ok(Plugin::Scorer(Arc::new(
            load_aware_scorer::LoadAwareScorer::new(p),
        )))
    }),
    row(running_requests_size_scorer::TYPE, |spec, ctx| {
        let mut p: running_requests_size_scorer::Params = params(spec)?;
        if let Some(s) = ctx.stale_after(spec) {
            p.stale_after_seconds = s;
        }
        Ok(Plugin::Scorer(Arc::new(
            running_requests_size_scorer::RunningRequestsSizeScorer::new(p),
        )))
    }),
    row(active_request_scorer::TYPE, |spec, ctx| {
        let p: active_request_scorer::Params = params(spec)?;
        if let Some(t) = p.request_timeout {
            if t.is_zero() {
                return Err(invalid_params(spec, "requestTimeout must be positive"));
            }
            if let Some(pool) = &ctx.env.pool {
                pool.inflight().set_timeout(t);
            }
        }
        Ok(Plugin::Scorer(Arc::new(
            active_request_scorer::ActiveRequestScorer,
        )))
    }),
    row(token_load_scorer::TYPE, |spec, _| {
        let p: token_load_scorer::Params = params(spec)?;
        if p.queue_threshold_tokens == 0 {
            return Err(invalid_params(
                spec,
                "queueThresholdTokens must be positive",
            ));
        }
        Ok(Plugin::Scorer(Arc::new(
            token_load_scorer::TokenLoadScorer::new(&p),
        )))
    }),
    row(session_affinity_scorer::TYPE, |spec, ctx| {
        let p: session_affinity_scorer::Params = params(spec)?;
        let s = session_affinity_scorer::SessionAffinityScorer::new(
            spec.name(),
            &p,
            ctx.env.pool.clone(),
        )
        .map_err(|e| invalid_params(spec, &e))?;
        Ok(Plugin::Scorer(Arc::new(s)))
    }),
    row(lora_affinity_scorer::TYPE, |spec, ctx| {
        let mut p: lora_affinity_scorer::Params = params(spec)?;
        if let Some(s) = ctx.stale_after(spec) {
            p.stale_after_seconds = s;
        }
        Ok(Plugin::Scorer(Arc::new(
            lora_affinity_scorer::LoraAffinityScorer::new(p),
        )))
    }),
    row(decode_filter::TYPE, |spec, _| {
        no_params(spec)?;
        Ok(Plugin::Filter(Arc::new(decode_filter::DecodeFilter)))
    }),
    row(prefill_filter::TYPE, |spec, _| {
        no_params(spec)?;
        Ok(Plugin::Filter(Arc::new(prefill_filter::PrefillFilter)))
    }),
    row(concurrency_detector::TYPE, |spec, _| {
        let p: concurrency_detector::Params = params(spec)?;
        let d = concurrency_detector::build(&p)
            .map_err(|(field, why)| invalid_params(spec, &format!("{field}: {why}")))?;
        Ok(Plugin::Detector(Arc::new(d)))
    }),
    row(utilization_detector::TYPE, |spec, ctx| {
        let d = utilization_detector::UtilizationDetectorPlugin::new(
            params(spec)?,
            ctx.scrape_interval(),
        )
        .map_err(|e| invalid_params(spec, &e))?;
        Ok(Plugin::Detector(Arc::new(d)))
    }),
    row(max_score_picker::TYPE, |spec, _| {
        Ok(Plugin::Picker(Arc::new(
            max_score_picker::MaxScorePicker::new(params(spec)?),
        )))
    }),
    row(random_picker::TYPE, |spec, _| {
        Ok(Plugin::Picker(Arc::new(random_picker::RandomPicker::new(
            params(spec)?,
        ))))
    }),
    row(weighted_random_picker::TYPE, |spec, _| {
        Ok(Plugin::Picker(Arc::new(
            weighted_random_picker::WeightedRandomPicker::new(params(spec)?),
        )))
    }),
    row(round_robin_picker::TYPE, |spec, _| {
        no_params(spec)?;
        Ok(Plugin::Picker(Arc::new(
            round_robin_picker::RoundRobinPicker::default(),
        )))
    }),
    row(prefix_based_pd_decider::TYPE, |spec, _| {
        let d = prefix_based_pd_decider::PrefixBasedPdDecider::new(params(spec)?)
            .map_err(|e| invalid_params(spec, &e))?;
        Ok(Plugin::Decider(Arc::new(d)))
    }),
    row(always_disagg_pd_decider::TYPE, |spec, _| {
        no_params(spec)?;
        Ok(Plugin::Decider(Arc::new(
            always_disagg_pd_decider::AlwaysDisaggPdDecider,
        )))
    }),
    late(single_profile_handler::TYPE, |spec, _| {
        no_params(spec)?;
        Ok(Plugin::Handler(Arc::new(
            single_profile_handler::SingleProfileHandler,
        )))
    }),
    late(pd_profile_handler::TYPE, |spec, ctx| {
        let p: pd_profile_handler::Params = params(spec)?;
        let d = match &p.decider_plugin_name {
            Some(name) => Some(decider(spec, ctx, name)?),
            None => None,
        };
        let h = pd_profile_handler::PdProfileHandler::new(spec.name(), p, d)
            .map_err(|e| invalid_params(spec, &e))?;
        Ok(Plugin::Handler(Arc::new(h)))
    }),
    late(disagg_profile_handler::TYPE, |spec, ctx| {
        let p: disagg_profile_handler::Params = params(spec)?;
        let (decode, prefill, d) = p.resolved().map_err(|e| invalid_params(spec, &e))?;
        let d = match &d {
            Some(name) => Some(decider(spec, ctx, name)?),
            None => None,
        };
        Ok(Plugin::Handler(Arc::new(
            disagg_profile_handler::DisaggProfileHandler::new(spec.name(), decode, prefill, d),
        )))
    }),
];

/// Every type name a configuration may use (built, then passive).
pub fn known_types() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = TYPES.iter().map(|t| t.name).collect();
    v.extend([
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
    ]);
    v
}

fn invalid_params(spec: &PluginSpec, why: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "plugin {:?} (type {}): parameters: {why}",
        spec.name(),
        spec.kind
    ))
}

/// A plugin's parameters as its typed struct (absent: the defaults).
pub fn params<T: DeserializeOwned + Default>(spec: &PluginSpec) -> Result<T, ConfigError> {
    match &spec.parameters {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| invalid_params(spec, &e.to_string()))
        }
    }
}

/// A plugin that takes no parameters refuses any.
fn no_params(spec: &PluginSpec) -> Result<(), ConfigError> {
    match &spec.parameters {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(invalid_params(spec, "this plugin takes no parameters")),
    }
}

/// What a configuration builds into.
pub struct Built {
    /// The profiles.
    pub profiles: Profiles,
    /// The profile handler.
    pub handler: Arc<dyn ProfileHandler>,
    /// The saturation detector behind shedding.
    pub detector: UtilizationDetector,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("profiles", &self.profiles)
            .field("detector", &self.detector)
            .finish_non_exhaustive()
    }
}

fn unknown_type(spec: &PluginSpec) -> ConfigError {
    match unsupported::nearest(&spec.kind) {
        Some(alt) => ConfigError::Unsupported(format!(
            "plugin {:?}: type {:?} (llm-d) is not implemented here; nearest supported: {alt}",
            spec.name(),
            spec.kind
        )),
        None => ConfigError::Invalid(format!(
            "plugin {:?}: unknown type {:?} (known: {})",
            spec.name(),
            spec.kind,
            known_types().join(", ")
        )),
    }
}

/// Builds the profiles, handler and saturation detector of a configuration.
pub fn build(config: &EndpointPickerConfig, env: &BuildEnv) -> Result<Built, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let mut ctx = Ctx {
        env,
        config,
        built: HashMap::new(),
        approx: RefCell::new(HashMap::new()),
    };
    let mut order: Vec<(&PluginSpec, Option<&PluginType>)> = Vec::new();
    for spec in &config.plugins {
        let t = TYPES.iter().find(|t| t.name == spec.kind);
        if t.is_none() && passive::build(spec).is_none() {
            return Err(unknown_type(spec));
        }
        order.push((spec, t));
    }
    // Handlers last: they refer to deciders by name.
    order.sort_by_key(|(_, t)| t.is_some_and(|t| t.late));
    let mut names_seen = std::collections::HashSet::new();
    for spec in &config.plugins {
        if !names_seen.insert(spec.name()) {
            return Err(invalid(format!(
                "plugin name {:?} is used twice",
                spec.name()
            )));
        }
    }
    for (spec, t) in order {
        let plugin = match t {
            Some(t) => (t.build)(spec, &ctx)?,
            None => match passive::build(spec) {
                Some(r) => Plugin::Passive(r?),
                None => return Err(unknown_type(spec)),
            },
        };
        ctx.built
            .insert(spec.name().to_owned(), (spec.kind.clone(), plugin));
    }
    check_sections(config, &ctx)?;
    let profiles = build_profiles(config, &ctx)?;
    let handlers: Vec<Arc<dyn ProfileHandler>> = config
        .plugins
        .iter()
        .filter_map(|s| match ctx.built.get(s.name()) {
            Some((_, Plugin::Handler(h))) => Some(h.clone()),
            _ => None,
        })
        .collect();
    let handler = match handlers.len() {
        0 if profiles.by_name.len() == 1 => {
            Arc::new(single_profile_handler::SingleProfileHandler) as Arc<dyn ProfileHandler>
        }
        0 => {
            return Err(invalid(
                "several profiles need a profile handler (e.g. disagg-profile-handler or pd-profile-handler)".into(),
            ));
        }
        1 => handlers[0].clone(),
        _ => return Err(invalid("more than one profile handler".into())),
    };
    handler.validate(&profiles)?;
    let detector = saturation_detector(config, &ctx)?;
    Ok(Built {
        profiles,
        handler,
        detector,
    })
}

/// The sections that refer to plugins: `dataLayer`, `requestHandler` / `parser`.
fn check_sections(config: &EndpointPickerConfig, ctx: &Ctx<'_>) -> Result<(), ConfigError> {
    if let Some(dl) = &config.data_layer {
        dl.check()?;
        for source in &dl.sources {
            let ok = |name: &str, what: &str| -> Result<(), ConfigError> {
                match ctx.plugin(name) {
                    Some((_, Plugin::Passive(Passive::DataLayer | Passive::PreciseProducer))) => {
                        Ok(())
                    }
                    Some((_, Plugin::Scorer(_))) if what == "extractor" => Ok(()),
                    Some((kind, _)) => Err(ConfigError::Invalid(format!(
                        "dataLayer.sources: {name:?} is a {kind}, not a data-layer {what}"
                    ))),
                    None => Err(ConfigError::Invalid(format!(
                        "dataLayer.sources: no plugin named {name:?}"
                    ))),
                }
            };
            ok(&source.plugin_ref, "source")?;
            for e in &source.extractors {
                ok(&e.plugin_ref, "extractor")?;
            }
        }
    }
    for p in config.parser_refs() {
        match ctx.plugin(p) {
            Some((_, Plugin::Passive(Passive::Parser))) => {}
            Some((kind, _)) => {
                return Err(ConfigError::Invalid(format!(
                    "requestHandler.parsers: {p:?} is a {kind}, not a parser"
                )));
            }
            None => {
                return Err(ConfigError::Invalid(format!(
                    "requestHandler.parsers: no plugin named {p:?}"
                )));
            }
        }
    }
    Ok(())
}

/// The saturation detector: the named `utilization-detector`, the inline thresholds, or GIE's
/// defaults.
fn saturation_detector(
    config: &EndpointPickerConfig,
    ctx: &Ctx<'_>,
) -> Result<UtilizationDetector, ConfigError> {
    if let Some(name) = config.saturation_detector_ref() {
        return match ctx.plugin(name) {
            Some((_, Plugin::Detector(d))) => Ok(d.detector.clone()),
            Some((kind, _)) => Err(ConfigError::Invalid(format!(
                "saturationDetector: {name:?} is a {kind}, not a saturation detector (utilization-detector)"
            ))),
            None => Err(ConfigError::Invalid(format!(
                "saturationDetector: no plugin named {name:?}"
            ))),
        };
    }
    match &config.saturation_detector {
        Some(SaturationDetectorSpec::Inline(t)) => {
            t.validate()
                .map_err(|e| ConfigError::Invalid(format!("saturationDetector: {e}")))?;
            Ok(UtilizationDetector::new(t.clone(), ctx.scrape_interval()))
        }
        _ => Ok(UtilizationDetector::new(
            Default::default(),
            ctx.scrape_interval(),
        )),
    }
}

fn build_profiles(config: &EndpointPickerConfig, ctx: &Ctx<'_>) -> Result<Profiles, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let mut specs = config.scheduling_profiles.clone();
    if specs.is_empty() {
        // llm-d: one profile with every filter, scorer and picker, in declaration order.
        specs.push(crate::config::ProfileSpec {
            name: "default".into(),
            plugins: config
                .plugins
                .iter()
                .filter(|s| {
                    matches!(
                        ctx.plugin(s.name()),
                        Some((
                            _,
                            Plugin::Filter(_)
                                | Plugin::Scorer(_)
                                | Plugin::Picker(_)
                                | Plugin::Detector(_)
                        ))
                    )
                })
                .map(|s| crate::config::PluginRef {
                    plugin_ref: s.name().to_owned(),
                    weight: None,
                })
                .collect(),
        });
    }
    let mut profiles = Profiles::default();
    for p in &specs {
        let mut filters = Vec::new();
        let mut scorers = Vec::new();
        let mut scorer_ids = Vec::new();
        let mut picker = None;
        for r in &p.plugins {
            let Some((kind, plugin)) = ctx.plugin(&r.plugin_ref) else {
                return Err(invalid(format!(
                    "profile {:?}: no plugin named {:?}",
                    p.name, r.plugin_ref
                )));
            };
            let kind = type_name(kind);
            match plugin {
                Plugin::Filter(f) => {
                    filters.push((PluginId::new(&r.plugin_ref, kind, "Filter"), f.clone()));
                }
                Plugin::Detector(d) => filters.push((
                    PluginId::new(&r.plugin_ref, kind, "Filter"),
                    d.clone() as Arc<dyn Filter>,
                )),
                Plugin::Scorer(s) => {
                    let w = r.weight.unwrap_or(1.0);
                    if !w.is_finite() || w < 0.0 {
                        return Err(invalid(format!(
                            "profile {:?}: weight of {:?} must be >= 0",
                            p.name, r.plugin_ref
                        )));
                    }
                    scorers.push((r.plugin_ref.clone(), s.clone(), w));
                    scorer_ids.push(PluginId::new(&r.plugin_ref, kind, "Scorer"));
                }
                Plugin::Picker(pk) => {
                    if picker
                        .replace((PluginId::new(&r.plugin_ref, kind, "Picker"), pk.clone()))
                        .is_some()
                    {
                        return Err(invalid(format!(
                            "profile {:?} has more than one picker",
                            p.name
                        )));
                    }
                }
                // A producer (llm-d's precise guide lists `tokenizer` in its profile), header
                // handler or data-layer plugin: nothing to run in a profile.
                Plugin::Passive(_) => {}
                Plugin::Handler(_) | Plugin::Decider(_) => {
                    return Err(invalid(format!(
                        "profile {:?}: {:?} is a profile handler or decider, which cannot be in a profile",
                        p.name, r.plugin_ref
                    )));
                }
            }
        }
        // llm-d: a profile without a picker gets a max-score-picker.
        let picker = picker.unwrap_or_else(|| {
            (
                PluginId::new(max_score_picker::TYPE, max_score_picker::TYPE, "Picker"),
                Arc::new(max_score_picker::MaxScorePicker::new(Default::default()))
                    as Arc<dyn Pick>,
            )
        });
        let profile = Profile {
            name: p.name.clone(),
            filters,
            scorers,
            scorer_ids,
            picker,
        };
        if profiles.by_name.insert(p.name.clone(), profile).is_some() {
            return Err(invalid(format!("profile {:?} is defined twice", p.name)));
        }
    }
    Ok(profiles)
}

/// The `&'static` spelling of a type name (for metric labels).
fn type_name(kind: &str) -> &'static str {
    TYPES
        .iter()
        .map(|t| t.name)
        .chain(known_types())
        .find(|t| *t == kind)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_yaml(yaml: &str) -> Result<Built, ConfigError> {
        let cfg = EndpointPickerConfig::parse(yaml)?;
        let kv = KvService::for_config(&cfg)?;
        build(
            &cfg,
            &BuildEnv {
                kv,
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_misspelt_parameter_is_an_error_naming_it() {
        let cfg = EndpointPickerConfig::parse(
            "plugins:\n  - type: precise-prefix-cache-scorer\n    parameters: {blockSze: 16}\n  - type: max-score-picker\nschedulingProfiles:\n  - name: d\n    plugins: [{pluginRef: precise-prefix-cache-scorer}, {pluginRef: max-score-picker}]\n",
        )
        .unwrap();
        let e = KvService::for_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("blockSze") && e.contains("precise-prefix-cache-scorer"),
            "{e}"
        );
        for bad in [
            "{type: queue-scorer, parameters: {staleAfterSecs: 1}}",
            "{type: max-score-picker, parameters: {maxNumOfEndpoint: 2}}",
            "{type: pd-profile-handler, parameters: {treshold: 2}}",
            "{type: decode-filter, parameters: {x: 1}}",
            "{type: prefix-based-pd-decider, parameters: {nonCachedToken: 1}}",
            "{type: prefix-based-pd-decider, parameters: {nonCachedTokens: -1}}",
            "{type: utilization-detector, parameters: {queueDepthThreshold: 0}}",
            "{type: prefix-cache-scorer, parameters: {matchLengthWeight: 2}}",
            "{type: pd-profile-handler, parameters: {primaryPort: 8000}}",
            "{type: session-affinity-scorer, parameters: {headerNme: x-session-token}}",
            "{type: session-affinity-scorer, parameters: {encodedEndpointHeaderConfig: {headr: x}}}",
            "{type: session-affinity-scorer, parameters: {strategy: session_id, sessionIdConfig: {sources: [{attribute: agent-identity}]}}}",
            "{type: session-affinity-scorer, parameters: {strategy: cookie}}",
            "{type: lora-affinity-scorer, parameters: {staleAfterSecs: 1}}",
        ] {
            let e = build_yaml(&format!(
                "plugins:\n  - {bad}\n  - type: random-picker\nschedulingProfiles:\n  - name: decode\n    plugins: [{{pluginRef: random-picker}}]\n  - name: prefill\n    plugins: [{{pluginRef: random-picker}}]\n"
            ))
            .map(|_| ())
            .unwrap_err()
            .to_string();
            assert!(e.contains("parameters"), "{bad}: {e}");
        }
    }

    #[test]
    fn llm_d_types_we_lack_name_the_nearest_alternative() {
        let e = build_yaml("plugins: [{type: session-affinity-filter}]\n")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("session-affinity-filter") && e.contains("session-affinity-scorer"),
            "{e}"
        );
        let e = build_yaml("plugins: [{type: quantum-scorer}]\n")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("quantum-scorer") && e.contains("known:"), "{e}");
    }

    #[test]
    fn llm_d_loader_defaults() {
        // No profiles: one default profile with every filter, scorer, picker; no picker:
        // max-score-picker; one profile: single-profile-handler.
        let b = build_yaml(
            "plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, {type: prefix-cache-scorer}, {type: tokenizer, parameters: {modelName: m}}]\n",
        )
        .unwrap();
        let p = &b.profiles.by_name["default"];
        assert_eq!(p.scorers.len(), 3);
        assert_eq!(p.picker.0.kind, "max-score-picker");
        // The P/D guide's v0.5 config: profiles without pickers, a header handler.
        let b = build_yaml(
            "plugins:\n- type: prefill-header-handler\n- type: prefill-filter\n- type: decode-filter\n- type: queue-scorer\n- type: pd-profile-handler\n  parameters: {threshold: 0, hashBlockSize: 5}\nschedulingProfiles:\n- name: prefill\n  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer, weight: 1.0}]\n- name: decode\n  plugins: [{pluginRef: decode-filter}, {pluginRef: queue-scorer, weight: 1.0}]\n",
        )
        .unwrap();
        assert_eq!(b.profiles.by_name.len(), 2);
        // A decider named by a handler must be a decider.
        let e = build_yaml(
            "plugins:\n- type: queue-scorer\n- type: disagg-profile-handler\n  parameters: {deciders: {prefill: queue-scorer}}\nschedulingProfiles:\n- {name: decode, plugins: []}\n- {name: prefill, plugins: []}\n",
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a P/D decider"), "{e}");
    }

    #[test]
    fn saturation_detector_and_sections_resolve() {
        let b = build_yaml(
            "plugins: [{type: utilization-detector, name: sd, parameters: {queueDepthThreshold: 3}}, {type: openai-parser}, {type: metrics-data-source}, {type: core-metrics-extractor}]\nsaturationDetector: {pluginRef: sd}\nrequestHandler: {parsers: [{pluginRef: openai-parser}]}\ndataLayer: {sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]}\nschedulingProfiles: [{name: d, plugins: []}]\n",
        )
        .unwrap();
        assert_eq!(b.detector.thresholds().queue_depth_threshold, 3.0);
        for (yaml, field) in [
            (
                "plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: queue-scorer}\n",
                "saturationDetector",
            ),
            (
                "plugins: [{type: queue-scorer}]\nparser: {pluginRef: openai-parser}\n",
                "parsers",
            ),
            (
                "plugins: [{type: queue-scorer}]\ndataLayer: {sources: [{pluginRef: queue-scorer}]}\n",
                "dataLayer",
            ),
            ("plugins: [{type: anthropic-parser}]\n", "openai-parser"),
            (
                "plugins: [{type: metrics-data-source, parameters: {path: /stats}}]\n",
                "path",
            ),
        ] {
            let e = build_yaml(yaml).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
    }
}
