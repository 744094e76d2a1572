//! `kv-cache-utilization-scorer`: `1 - vllm:kv_cache_usage_perc`. A pod whose scraped data is
//! older than `staleAfterSeconds` gets the neutral 0.5.
//!
//! Parameters: `staleAfterSeconds` (5).

use super::{loads, stale_after};
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "kv-cache-utilization-scorer";

/// Parameters (the same as the queue scorer's).
pub type Params = super::queue_scorer::Params;

/// `kv-cache-utilization-scorer`.
#[derive(Debug)]
pub struct KvCacheUtilizationScorer {
    params: Params,
}

impl KvCacheUtilizationScorer {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self { params }
    }
}

impl Scorer for KvCacheUtilizationScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        loads(candidates, stale_after(self.params.stale_after_seconds))
            .iter()
            .map(|l| l.map_or(0.5, |l| 1.0 - l.kv_usage))
            .collect()
    }
}
