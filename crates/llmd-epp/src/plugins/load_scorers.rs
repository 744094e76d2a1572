//! Load scorers, from each pod's scraped vLLM gauges. A pod whose data is stale (older than
//! `staleAfterSeconds`, default 5) gets the neutral score 0.5: it is neither preferred nor
//! avoided on data that cannot be trusted.
//!
//! - `queue-scorer`: min-max over candidates of `vllm:num_requests_waiting`: the shortest queue
//!   scores 1, the longest 0 (all equal: 1).
//! - `kv-cache-utilization-scorer`: `1 - vllm:kv_cache_usage_perc`.
//! - `load-aware-scorer`: `1 - min(waiting, threshold) / threshold` (`threshold`, default 128).

use std::time::Duration;

use serde_json::Value;

use super::{CycleState, Scorer, param};
use crate::endpoints::{Endpoint, Load};

fn stale_after(params: &Option<Value>) -> Duration {
    Duration::from_secs_f64(
        param(params, "staleAfterSeconds")
            .and_then(Value::as_f64)
            .unwrap_or(5.0)
            .max(0.0),
    )
}

fn loads(candidates: &[Endpoint], max_age: Duration) -> Vec<Option<Load>> {
    candidates.iter().map(|e| e.fresh_load(max_age)).collect()
}

/// `queue-scorer`.
#[derive(Debug)]
pub struct QueueScorer {
    max_age: Duration,
}

impl QueueScorer {
    /// From parameters.
    pub fn new(params: &Option<Value>) -> Self {
        Self {
            max_age: stale_after(params),
        }
    }
}

impl Scorer for QueueScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let loads = loads(candidates, self.max_age);
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

/// `kv-cache-utilization-scorer`.
#[derive(Debug)]
pub struct KvCacheUtilizationScorer {
    max_age: Duration,
}

impl KvCacheUtilizationScorer {
    /// From parameters.
    pub fn new(params: &Option<Value>) -> Self {
        Self {
            max_age: stale_after(params),
        }
    }
}

impl Scorer for KvCacheUtilizationScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        loads(candidates, self.max_age)
            .iter()
            .map(|l| l.map_or(0.5, |l| 1.0 - l.kv_usage))
            .collect()
    }
}

/// `load-aware-scorer`.
#[derive(Debug)]
pub struct LoadAwareScorer {
    max_age: Duration,
    threshold: f64,
}

impl LoadAwareScorer {
    /// From parameters.
    pub fn new(params: &Option<Value>) -> Self {
        let threshold = param(params, "threshold")
            .and_then(Value::as_f64)
            .filter(|t| *t > 0.0)
            .unwrap_or(128.0);
        Self {
            max_age: stale_after(params),
            threshold,
        }
    }
}

impl Scorer for LoadAwareScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        loads(candidates, self.max_age)
            .iter()
            .map(|l| {
                l.map_or(0.5, |l| {
                    1.0 - l.waiting.min(self.threshold) / self.threshold
                })
            })
            .collect()
    }
}
