//! A scheduling profile: its filters in order, its scorers' weighted sum
//! (`Σ weight × clamp(score, 0, 1)`), its picker; and the profiles of a configuration by name.
//! After the picker's choice, the candidates that remain may follow as fallbacks, best score
//! first (the scheduler's `fallbacks`, `--fallback-endpoints`), so a data plane that walks the
//! list can try another pod when the first cannot be reached.

use std::collections::HashMap;
use std::sync::Arc;

use super::{CycleState, Filter, Pick, PickError, Scorer};
use crate::endpoints::Endpoint;

/// One profile.
pub struct Profile {
    /// Name.
    pub name: String,
    /// Filters, in order.
    pub filters: Vec<Arc<dyn Filter>>,
    /// Scorers: (plugin name, scorer, weight).
    pub scorers: Vec<(String, Arc<dyn Scorer>, f64)>,
    /// The picker.
    pub picker: Arc<dyn Pick>,
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
    /// Filters, scores and picks: the chosen endpoints, best first, then fallbacks (empty when
    /// no candidate remains).
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
                    explain.push((self.name.clone(), name.clone(), eps[i].id.to_string(), s));
                }
            }
        }
        let scored: Vec<(Endpoint, f64)> = eps.into_iter().zip(totals).collect();
        let mut picked = self.picker.pick(&scored);
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
        Ok(p.run(cs, candidates))
    }
}
