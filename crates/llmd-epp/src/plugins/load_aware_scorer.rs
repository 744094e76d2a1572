//! `load-aware-scorer`, llm-d's formula exactly: a pod with an empty waiting queue scores 0.5;
//! one with `w` waiting requests scores `0.5 × (1 − min(w, threshold) / threshold)`, so the
//! range is 0..0.5 (llm-d keeps the upper half for pods with spare capacity, which no metric
//! shows yet). A pod whose scraped data is older than `staleAfterSeconds` scores 0.5, as a pod
//! llm-d has no queue figure for does.
//!
//! Parameters: `threshold` (waiting requests at which a pod scores 0; 128; not positive: 128,
//! as llm-d does, with a warning), `staleAfterSeconds` (5, ours).

use serde::Deserialize;

use super::{STALE_AFTER_SECONDS, loads, stale_after};
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "load-aware-scorer";

/// llm-d's default threshold.
pub const DEFAULT_THRESHOLD: f64 = 128.0;

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
            threshold: DEFAULT_THRESHOLD,
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
    /// From parameters (a threshold that is not positive becomes llm-d's default).
    pub fn new(mut params: Params) -> Self {
        if !(params.threshold.is_finite() && params.threshold > 0.0) {
            tracing::warn!(
                threshold = params.threshold,
                default = DEFAULT_THRESHOLD,
                "load-aware-scorer: threshold should be positive; using the default (as llm-d does)"
            );
            params.threshold = DEFAULT_THRESHOLD;
        }
        Self { params }
    }
}

impl Scorer for LoadAwareScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let t = self.params.threshold;
        loads(candidates, stale_after(self.params.stale_after_seconds))
            .iter()
            .map(|l| match l {
                Some(l) if l.waiting > 0.0 => 0.5 * (1.0 - l.waiting.min(t) / t),
                _ => 0.5,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{Load, Pool};
    use crate::plugins::test_endpoint;

    #[test]
    fn llm_d_range_idle_half_full_zero() {
        let pool = Pool::default();
        pool.replace(
            (0..5)
                .map(|i| (*test_endpoint(8000 + i).spec).clone())
                .collect(),
        );
        for (i, w) in [0.0, 32.0, 128.0, 500.0].iter().enumerate() {
            pool.set_load(
                &format!("10.0.0.1:{}", 8000 + i),
                Load {
                    waiting: *w,
                    ..Default::default()
                },
            );
        }
        let eps = pool.snapshot();
        let mut cs = crate::scheduling::CycleState::for_test();
        let s = LoadAwareScorer::new(Params::default()).score(&mut cs, &eps);
        assert_eq!(s, vec![0.5, 0.375, 0.0, 0.0, 0.5]);
        let s = LoadAwareScorer::new(Params {
            threshold: 0.0,
            ..Default::default()
        })
        .score(&mut cs, &eps);
        assert_eq!(s[1], 0.375, "threshold 0 is llm-d's default 128");
    }
}
