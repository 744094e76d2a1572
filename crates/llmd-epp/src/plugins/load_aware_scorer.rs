//! `load-aware-scorer`: `1 - min(waiting, threshold) / threshold`. A pod whose scraped data is
//! older than `staleAfterSeconds` gets the neutral 0.5.
//!
//! Parameters: `threshold` (waiting requests at which a pod scores 0; 128),
//! `staleAfterSeconds` (5).

use serde::Deserialize;

use super::{STALE_AFTER_SECONDS, loads, stale_after};
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "load-aware-scorer";

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// Waiting requests at which a pod scores 0.
    pub threshold: f64,
    /// Scraped data older than this is not trusted (seconds).
    pub stale_after_seconds: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            threshold: 128.0,
            stale_after_seconds: STALE_AFTER_SECONDS,
        }
    }
}

/// `load-aware-scorer`.
#[derive(Debug)]
pub struct LoadAwareScorer {
    params: Params,
}

impl LoadAwareScorer {
    /// From parameters (`threshold` must be positive).
    pub fn new(params: Params) -> Result<Self, String> {
        if params.threshold.is_finite() && params.threshold > 0.0 {
            Ok(Self { params })
        } else {
            Err("threshold must be a positive number".into())
        }
    }
}

impl Scorer for LoadAwareScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let t = self.params.threshold;
        loads(candidates, stale_after(self.params.stale_after_seconds))
            .iter()
            .map(|l| l.map_or(0.5, |l| 1.0 - l.waiting.min(t) / t))
            .collect()
    }
}
