//! A scheduling profile: its filters in order, its scorers' weighted sum
//! (`Σ weight × clamp(score, 0, 1)`), its picker; and the profiles of a configuration by name.
//! After the picker's choice, the candidates that remain may follow as fallbacks, best score
//! first (the scheduler's `fallbacks`, `--fallback-endpoints`), so a data plane that walks the
//! list can try another pod when the first cannot be reached.
//!
//! Each plugin call is timed into GIE's and llm-d's `plugin_duration_seconds` histograms
//! (`extension_point`, `plugin_type`, `plugin_name`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use llmd_telemetry::names;

use super::{CycleState, Decision, Filter, Pick, PickError, Scorer};
use crate::endpoints::Endpoint;

/// A plugin instance in a profile: its identity and its `plugin_duration_seconds` series
/// (registered once, when the profile is built).
#[derive(Clone)]
pub struct PluginId {
    /// The instance name.
    pub name: String,
    /// The llm-d type.
    pub kind: &'static str,
    timers: [metrics::Histogram; 2],
}

impl std::fmt::Debug for PluginId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginId")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl PluginId {
    /// A plugin called at `extension_point` (`Filter`, `Scorer`, `Picker`).
    pub fn new(name: &str, kind: &'static str, extension_point: &'static str) -> Self {
        let timer = |def: &names::MetricDef| {
            metrics::histogram!(
                def.name,
                "extension_point" => extension_point,
                "plugin_type" => kind,
                "plugin_name" => name.to_owned()
            )
        };
        Self {
            name: name.to_owned(),
            kind,
            timers: [
                timer(&names::epp::PLUGIN_DURATION),
                timer(&names::epp::LLMD_PLUGIN_DURATION),
            ],
        }
    }

    /// Records how long one call took.
    pub fn timed(&self, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        for t in &self.timers {
            t.record(secs);
        }
    }
}

/// One profile.
pub struct Profile {
    /// Name.
    pub name: String,
    /// Filters, in order.
    pub filters: Vec<(PluginId, Arc<dyn Filter>)>,
    /// Scorers: (plugin name, scorer, weight).
    pub scorers: Vec<(String, Arc<dyn Scorer>, f64)>,
    /// The scorers' identities, in the same order.
    pub scorer_ids: Vec<PluginId>,
    /// The picker.
    pub picker: (PluginId, Arc<dyn Pick>),
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scorers: Vec<(&str, f64)> = self
            .scorers
            .iter()
            .map(|(n, _, w)| (n.as_str(), *w))
            .collect();
        let filters: Vec<&str> = self
            .filters
            .iter()
            .map(|(id, _)| id.name.as_str())
            .collect();
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("filters", &filters)
            .field("scorers", &scorers)
            .field("picker", &self.picker.0.name)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// Filters, scores and picks: the chosen endpoints, best first, then fallbacks (empty when
    /// no candidate remains).
    pub fn run(&self, cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        let mut eps = candidates;
        for (id, f) in &self.filters {
            let started = Instant::now();
            eps = f.filter(cs, eps);
            id.timed(started);
            if eps.is_empty() {
                return Vec::new();
            }
        }
        let mut totals = vec![0.0; eps.len()];
        for ((name, scorer, weight), id) in self.scorers.iter().zip(&self.scorer_ids) {
            let started = Instant::now();
            let scores = scorer.score(cs, &eps);
            id.timed(started);
            for (i, s) in scores.iter().enumerate().take(eps.len()) {
                let s = if s.is_finite() {
                    s.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                totals[i] += weight * s;
                if let Some(explain) = cs.explain.as_mut() {
                    explain.push((self.name.clone(), name.clone(), eps[i].id.to_string(), s));
                }
            }
        }
        let scored: Vec<(Endpoint, f64)> = eps.into_iter().zip(totals).collect();
        let started = Instant::now();
        let mut picked = self.picker.1.pick(&scored);
        self.picker.0.timed(started);
        let mut rest: Vec<&(Endpoint, f64)> = scored
            .iter()
            .filter(|(e, _)| !picked.iter().any(|p| p.id == e.id))
            .collect();
        rest.sort_by(|a, b| b.1.total_cmp(&a.1));
        picked.extend(rest.into_iter().take(cs.fallbacks).map(|(e, _)| e.clone()));
        picked
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
        let picked = p.run(cs, candidates);
        if let Some(first) = picked.first() {
            cs.picks.insert(name.to_owned(), first.id.to_string());
        }
        Ok(picked)
    }

    /// Tells every scorer (once, whatever the profiles sharing it) the decision.
    pub fn pre_request(&self, cs: &CycleState<'_>, decision: &Decision) {
        for s in self.scorers() {
            s.pre_request(cs, decision);
        }
    }

    /// The headers every scorer (once each) sets on the response to the client; a later
    /// scorer's value for the same name replaces an earlier one's.
    pub fn response_headers(
        &self,
        cs: &CycleState<'_>,
        decision: &Decision,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in self.scorers() {
            for (k, v) in s.response_headers(cs, decision) {
                match out.iter_mut().find(|(o, _)| o.eq_ignore_ascii_case(&k)) {
                    Some(slot) => slot.1 = v,
                    None => out.push((k, v)),
                }
            }
        }
        out
    }

    /// Every scorer once, whatever the profiles sharing it, in profile-name order.
    fn scorers(&self) -> Vec<&Arc<dyn Scorer>> {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        let mut seen: Vec<*const ()> = Vec::new();
        let mut out = Vec::new();
        for name in names {
            for (_, s, _) in &self.by_name[name].scorers {
                let ptr = Arc::as_ptr(s) as *const ();
                if !seen.contains(&ptr) {
                    seen.push(ptr);
                    out.push(s);
                }
            }
        }
        out
    }
}
