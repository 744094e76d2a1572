//! `running-requests-size-scorer` (llm-d): min-max over the candidates of
//! `vllm:num_requests_running`: the fewest running requests score 1, the most 0 (all equal:
//! 1). A pod whose scraped data is older than `staleAfterSeconds` gets the neutral 0.5.
//!
//! Parameters: `staleAfterSeconds` (5, ours).

use super::{loads, stale_after};
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "running-requests-size-scorer";

/// Parameters (as the queue scorer's).
pub type Params = super::queue_scorer::Params;

/// `running-requests-size-scorer`.
#[derive(Debug)]
pub struct RunningRequestsSizeScorer {
    params: Params,
}

impl RunningRequestsSizeScorer {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self { params }
    }
}

impl Scorer for RunningRequestsSizeScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let loads = loads(candidates, stale_after(self.params.stale_after_seconds));
        let (min, max) = loads
            .iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
                (a.min(l.running), b.max(l.running))
            });
        loads
            .iter()
            .map(|l| match l {
                None => 0.5,
                Some(_) if max <= min => 1.0,
                Some(l) => (max - l.running) / (max - min),
            })
            .collect()
    }
}
