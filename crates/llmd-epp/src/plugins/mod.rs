//! Scheduler plugins: filters, scorers, pickers and profile handlers, by llm-d's type names.
//!
//! | type | kind | file |
//! |---|---|---|
//! | `precise-prefix-cache-scorer` | scorer | `precise_prefix_cache_scorer.rs` |
//! | `queue-scorer`, `kv-cache-utilization-scorer`, `load-aware-scorer` | scorers | `load_scorers.rs` |
//! | `prefill-filter`, `decode-filter` | filters | `filters.rs` |
//! | `max-score-picker`, `random-picker`, `round-robin-picker` | pickers | `pickers.rs` |
//! | `single-profile-handler`, `pd-profile-handler` | profile handlers | `profile_handlers.rs` |
//!
//! A profile runs its filters in order, sums its scorers' `weight × clamp(score, 0, 1)`, and lets
//! its picker order the candidates. The profile handler decides which profiles run (one, or the
//! decode then maybe the prefill profile) and turns their picks into a decision.

pub mod filters;
pub mod load_scorers;
pub mod pickers;
pub mod precise_prefix_cache_scorer;
pub mod profile_handlers;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{ConfigError, EndpointPickerConfig};
use crate::endpoints::Endpoint;
use crate::extproc::{Decision, PickError};
use crate::request::InferenceRequest;

/// Per-endpoint consecutive prefix blocks, computed once per request by the prefix scorer and
/// read by the P/D profile handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixMatch {
    /// Tokens per block.
    pub block_size: usize,
    /// Full blocks of the prompt.
    pub total_blocks: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Endpoint id → consecutive matched blocks from block 0.
    pub matched: HashMap<String, u32>,
}

/// State shared by the plugins while one request is scheduled.
#[derive(Debug)]
pub struct CycleState<'a> {
    /// The request (`None` without a body).
    pub request: Option<&'a InferenceRequest>,
    /// Request headers, lower-cased.
    pub headers: &'a [(String, String)],
    /// Filled by the precise prefix scorer.
    pub prefix: Option<PrefixMatch>,
    /// Plugin scores per profile, for `/debug/route`: (profile, plugin, endpoint, score).
    pub explain: Option<Vec<(String, String, String, f64)>>,
    /// The prompt's block keys, once computed (for lookups of more candidates).
    pub keys: Option<Vec<llmd_kv_index::hashing::BlockKey>>,
}

/// Removes candidates.
pub trait Filter: Send + Sync {
    /// The candidates that remain.
    fn filter(&self, cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint>;
}

/// Scores candidates in `[0, 1]` (higher is better).
pub trait Scorer: Send + Sync {
    /// One score per candidate, in order.
    fn score(&self, cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64>;
}

/// Orders scored candidates; the first is the destination, the rest fallbacks.
pub trait Pick: Send + Sync {
    /// The chosen endpoints, best first.
    fn pick(&self, scored: &[(Endpoint, f64)]) -> Vec<Endpoint>;
}

/// Runs profiles and makes the decision.
pub trait ProfileHandler: Send + Sync {
    /// The decision for the candidates.
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError>;

    /// Checks the profiles it needs exist.
    fn validate(&self, _profiles: &Profiles) -> Result<(), ConfigError> {
        Ok(())
    }
}

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
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Plugin::Filter(_) => "Plugin::Filter",
            Plugin::Scorer(_) => "Plugin::Scorer",
            Plugin::Picker(_) => "Plugin::Picker",
            Plugin::Handler(_) => "Plugin::Handler",
        })
    }
}

/// One profile.
pub struct Profile {
    /// Name.
    pub name: String,
    filters: Vec<Arc<dyn Filter>>,
    scorers: Vec<(String, Arc<dyn Scorer>, f64)>,
    picker: Arc<dyn Pick>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scorers: Vec<(&str, f64)> = self
            .scorers
            .iter()
            .map(|(n, _, w)| (n.as_str(), *w))
            .collect();
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("filters", &self.filters.len())
            .field("scorers", &scorers)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// Filters, scores and picks: the chosen endpoints, best first (empty when none remain).
    pub fn run(&self, cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        let mut eps = candidates;
        for f in &self.filters {
            eps = f.filter(cs, eps);
            if eps.is_empty() {
                return Vec::new();
            }
        }
        let mut totals = vec![0.0; eps.len()];
        for (name, scorer, weight) in &self.scorers {
            let scores = scorer.score(cs, &eps);
            for (i, s) in scores.iter().enumerate().take(eps.len()) {
                let s = if s.is_finite() {
                    s.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                totals[i] += weight * s;
                if let Some(explain) = cs.explain.as_mut() {
                    explain.push((self.name.clone(), name.clone(), eps[i].id.clone(), s));
                }
            }
        }
        let scored: Vec<(Endpoint, f64)> = eps.into_iter().zip(totals).collect();
        self.picker.pick(&scored)
    }
}

/// The profiles by name.
#[derive(Default, Debug)]
pub struct Profiles {
    /// Profiles.
    pub by_name: HashMap<String, Profile>,
}

impl Profiles {
    /// Runs profile `name`.
    pub fn run(
        &self,
        name: &str,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Vec<Endpoint>, PickError> {
        let p = self
            .by_name
            .get(name)
            .ok_or_else(|| PickError::Internal(format!("no scheduling profile {name:?}")))?;
        Ok(p.run(cs, candidates))
    }
}

/// Reads a parameter of a plugin.
pub(crate) fn param<'a>(params: &'a Option<Value>, name: &str) -> Option<&'a Value> {
    params.as_ref().and_then(|p| p.get(name))
}

/// What building plugins may need beyond their parameters.
#[derive(Default, Debug)]
pub struct PluginEnv {
    /// The prefix-cache state, created by the first precise prefix scorer.
    pub prefix: Option<Arc<precise_prefix_cache_scorer::PrefixEnv>>,
}

/// Builds the profiles and handler of a configuration.
pub fn build(
    config: &EndpointPickerConfig,
    env: &mut PluginEnv,
) -> Result<(Profiles, Arc<dyn ProfileHandler>), ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let mut plugins: HashMap<String, Plugin> = HashMap::new();
    for spec in &config.plugins {
        let plugin = match spec.kind.as_str() {
            "precise-prefix-cache-scorer" => Plugin::Scorer(Arc::new(
                precise_prefix_cache_scorer::PrecisePrefixCacheScorer::new(&spec.parameters, env)?,
            )),
            "queue-scorer" => {
                Plugin::Scorer(Arc::new(load_scorers::QueueScorer::new(&spec.parameters)))
            }
            "kv-cache-utilization-scorer" => Plugin::Scorer(Arc::new(
                load_scorers::KvCacheUtilizationScorer::new(&spec.parameters),
            )),
            "load-aware-scorer" => Plugin::Scorer(Arc::new(load_scorers::LoadAwareScorer::new(
                &spec.parameters,
            ))),
            "prefill-filter" => Plugin::Filter(Arc::new(filters::RoleFilter::prefill())),
            "decode-filter" => Plugin::Filter(Arc::new(filters::RoleFilter::decode())),
            "max-score-picker" => {
                Plugin::Picker(Arc::new(pickers::MaxScorePicker::new(&spec.parameters)))
            }
            "random-picker" => {
                Plugin::Picker(Arc::new(pickers::RandomPicker::new(&spec.parameters)))
            }
            "round-robin-picker" => Plugin::Picker(Arc::new(pickers::RoundRobinPicker::default())),
            "single-profile-handler" => {
                Plugin::Handler(Arc::new(profile_handlers::SingleProfileHandler))
            }
            "pd-profile-handler" => Plugin::Handler(Arc::new(
                profile_handlers::PdProfileHandler::new(&spec.parameters)?,
            )),
            other => return Err(invalid(format!("unknown plugin type {other:?}"))),
        };
        if plugins.insert(spec.name().to_owned(), plugin).is_some() {
            return Err(invalid(format!(
                "plugin name {:?} is used twice",
                spec.name()
            )));
        }
    }
    let mut profiles = Profiles::default();
    for p in &config.scheduling_profiles {
        let mut filters = Vec::new();
        let mut scorers = Vec::new();
        let mut picker = None;
        for r in &p.plugins {
            match plugins.get(&r.plugin_ref) {
                None => {
                    return Err(invalid(format!(
                        "profile {:?}: no plugin named {:?}",
                        p.name, r.plugin_ref
                    )));
                }
                Some(Plugin::Filter(f)) => filters.push(f.clone()),
                Some(Plugin::Scorer(s)) => {
                    let w = r.weight.unwrap_or(1.0);
                    if !w.is_finite() || w < 0.0 {
                        return Err(invalid(format!(
                            "profile {:?}: weight of {:?} must be >= 0",
                            p.name, r.plugin_ref
                        )));
                    }
                    scorers.push((r.plugin_ref.clone(), s.clone(), w));
                }
                Some(Plugin::Picker(pk)) => {
                    if picker.replace(pk.clone()).is_some() {
                        return Err(invalid(format!(
                            "profile {:?} has more than one picker",
                            p.name
                        )));
                    }
                }
                Some(Plugin::Handler(_)) => {
                    return Err(invalid(format!(
                        "profile {:?}: a profile handler cannot be in a profile",
                        p.name
                    )));
                }
            }
        }
        let picker =
            picker.ok_or_else(|| invalid(format!("profile {:?} has no picker", p.name)))?;
        if profiles
            .by_name
            .insert(
                p.name.clone(),
                Profile {
                    name: p.name.clone(),
                    filters,
                    scorers,
                    picker,
                },
            )
            .is_some()
        {
            return Err(invalid(format!("profile {:?} is defined twice", p.name)));
        }
    }
    let handlers: Vec<Arc<dyn ProfileHandler>> = plugins
        .values()
        .filter_map(|p| {
            if let Plugin::Handler(h) = p {
                Some(h.clone())
            } else {
                None
            }
        })
        .collect();
    let handler = match handlers.len() {
        0 if profiles.by_name.len() == 1 => {
            Arc::new(profile_handlers::SingleProfileHandler) as Arc<dyn ProfileHandler>
        }
        0 => {
            return Err(invalid(
                "several profiles need a profile handler (e.g. pd-profile-handler)".into(),
            ));
        }
        1 => handlers[0].clone(),
        _ => return Err(invalid("more than one profile handler".into())),
    };
    profile_handlers::validate(&handler, &profiles)?;
    Ok((profiles, handler))
}
