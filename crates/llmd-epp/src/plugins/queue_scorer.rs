//! `queue-scorer`: min-max over the candidates of `vllm:num_requests_waiting`: the shortest
//! queue scores 1, the longest 0 (all equal: 1). A pod whose scraped data is older than
//! `staleAfterSeconds` gets the neutral 0.5.
//!
//! Parameters: `staleAfterSeconds` (5).

use serde::Deserialize;

use super::{STALE_AFTER_SECONDS, loads, stale_after};
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "queue-scorer";

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// Scraped data older than this is not trusted (seconds).
    pub stale_after_seconds: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            stale_after_seconds: STALE_AFTER_SECONDS,
        }
    }
}

/// `queue-scorer`.
#[derive(Debug)]
pub struct QueueScorer {
    params: Params,
}

impl QueueScorer {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self { params }
    }
}

impl Scorer for QueueScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let loads = loads(candidates, stale_after(self.params.stale_after_seconds));
        let known: Vec<f64> = loads.iter().flatten().map(|l| l.waiting).collect();
        let (min, max) = known
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| {
                (a.min(*q), b.max(*q))
            });
        loads
            .iter()
            .map(|l| match l {
                None => 0.5,
                Some(_) if max <= min => 1.0,
                Some(l) => (max - l.waiting) / (max - min),
            })
            .collect()
    }
}
