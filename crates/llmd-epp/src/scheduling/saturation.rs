//! GIE's utilization saturation detector (`utilization-detector`), the signal behind
//! shedding: an endpoint's saturation is `max(waiting / queueDepthThreshold, kvUsage /
//! kvCacheUtilThreshold)`, or 1.0 when its metrics are missing or stale (fail closed); the
//! pool's is the mean over the candidates, 1.0 when there are none. The pool is saturated at
//! 1.0 and above, and only then are sheddable requests (priority < 0) refused.
//!
//! Used as a filter (in a profile) it keeps the endpoints under `threshold × (1 + headroom)`
//! with fresh metrics, or every endpoint when none is.

use std::time::Duration;

use crate::config::SaturationThresholds;
use crate::endpoints::Endpoint;

/// The detector.
#[derive(Debug, Clone, PartialEq)]
pub struct UtilizationDetector {
    thresholds: SaturationThresholds,
    staleness: Duration,
}

impl Default for UtilizationDetector {
    fn default() -> Self {
        Self::new(SaturationThresholds::default(), Duration::from_secs(1))
    }
}

impl UtilizationDetector {
    /// With these thresholds, for endpoints scraped every `scrape_interval` (see
    /// [`SaturationThresholds::staleness`]).
    pub fn new(thresholds: SaturationThresholds, scrape_interval: Duration) -> Self {
        let staleness = thresholds.staleness(scrape_interval);
        Self {
            thresholds,
            staleness,
        }
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &SaturationThresholds {
        &self.thresholds
    }

    /// The same thresholds for another scrape interval.
    pub fn for_scrape_interval(&self, scrape_interval: Duration) -> Self {
        Self::new(self.thresholds.clone(), scrape_interval)
    }

    /// Metrics older than this count as saturated.
    pub fn staleness(&self) -> Duration {
        self.staleness
    }

    /// One endpoint's saturation.
    pub fn endpoint(&self, e: &Endpoint) -> f64 {
        match e.current_load(self.staleness) {
            None => 1.0,
            Some(l) => (l.waiting / self.thresholds.queue_depth_threshold)
                .max(l.kv_usage / self.thresholds.kv_cache_util_threshold),
        }
    }

    /// The pool's saturation over these candidates (1.0 with none).
    pub fn saturation(&self, candidates: &[Endpoint]) -> f64 {
        if candidates.is_empty() {
            return 1.0;
        }
        candidates.iter().map(|e| self.endpoint(e)).sum::<f64>() / candidates.len() as f64
    }

    /// The filter: endpoints with fresh metrics under the limits (thresholds × (1 +
    /// headroom)); all of them when none is.
    pub fn filter(&self, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        let q = self.thresholds.queue_depth_threshold * (1.0 + self.thresholds.headroom);
        let kv = self.thresholds.kv_cache_util_threshold * (1.0 + self.thresholds.headroom);
        let keep: Vec<bool> = candidates
            .iter()
            .map(|e| {
                e.current_load(self.staleness)
                    .is_some_and(|l| l.waiting < q && l.kv_usage < kv)
            })
            .collect();
        if !keep.iter().any(|k| *k) {
            return candidates;
        }
        candidates
            .into_iter()
            .zip(keep)
            .filter_map(|(e, k)| k.then_some(e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{Load, Pool};
    use crate::plugins::test_endpoint;

    fn pool(loads: &[Option<(f64, f64)>]) -> Vec<Endpoint> {
        let pool = Pool::default();
        let specs: Vec<_> = (0..loads.len())
            .map(|i| (*test_endpoint(8000 + i as u16).spec).clone())
            .collect();
        pool.replace(specs);
        for (i, l) in loads.iter().enumerate() {
            if let Some((waiting, kv_usage)) = l {
                pool.set_load(
                    &format!("10.0.0.1:{}", 8000 + i),
                    Load {
                        waiting: *waiting,
                        running: 0.0,
                        kv_usage: *kv_usage,
                        ..Default::default()
                    },
                );
            }
        }
        pool.snapshot().to_vec()
    }

    #[test]
    fn pool_saturation_is_the_mean_of_the_rooflines() {
        let d = UtilizationDetector::default();
        // 10/5 = 2.0 and max(0, 0.4/0.8) = 0.5: mean 1.25.
        let eps = pool(&[Some((10.0, 0.0)), Some((0.0, 0.4))]);
        assert!((d.saturation(&eps) - 1.25).abs() < 1e-9);
        // One saturated pod of four does not saturate the pool (GIE sheds on the pool, not on
        // any pod).
        let eps = pool(&[
            Some((10.0, 0.0)),
            Some((0.0, 0.0)),
            Some((0.0, 0.0)),
            Some((0.0, 0.0)),
        ]);
        assert!(d.saturation(&eps) < 1.0);
        // Unknown metrics count as full; no candidates is saturated.
        let eps = pool(&[None, Some((0.0, 0.0))]);
        assert!((d.saturation(&eps) - 0.5).abs() < 1e-9);
        assert_eq!(d.saturation(&[]), 1.0);
    }

    #[test]
    fn the_filter_keeps_endpoints_under_the_limits_or_all() {
        let d = UtilizationDetector::new(
            SaturationThresholds {
                headroom: 0.2,
                ..Default::default()
            },
            Duration::from_millis(50),
        );
        let eps = pool(&[Some((5.0, 0.0)), Some((6.0, 0.0)), None, Some((0.0, 0.97))]);
        let kept: Vec<u16> = d.filter(eps.clone()).iter().map(|e| e.spec.port).collect();
        assert_eq!(
            kept,
            vec![8000],
            "limit 6 requests, 0.96 KV usage, fresh metrics"
        );
        let all = pool(&[Some((9.0, 0.0)), None]);
        assert_eq!(d.filter(all.clone()).len(), 2);
    }
}
