//! GIE's utilization saturation detector (`utilization-detector`), the signal behind
//! shedding: an endpoint's saturation is `max(waiting / queueDepthThreshold, kvUsage /
//! kvCacheUtilThreshold)`, or 1.0 when its metrics are missing or stale (fail closed); the
//! pool's is the mean over the candidates, 1.0 when there are none. The pool is saturated at
//! 1.0 and above, and only then are sheddable requests (priority < 0) refused.
//!
//! Used as a filter (in a profile) it keeps the endpoints under `threshold × (1 + headroom)`
//! with fresh metrics, or every endpoint when none is.
//!
//! llm-d's `concurrency-detector` is the other kind ([`ConcurrencyLimits`]): saturation from
//! the EPP's own in-flight count ([`crate::inflight`]) against a capacity per endpoint, with
//! no scrape involved: requests mode `Σ in-flight requests / (endpoints × maxConcurrency)`,
//! tokens mode the same in uncached prompt tokens, hybrid the largest of those two and of the
//! mean of each endpoint's larger ratio. As a filter it drops endpoints whose in-flight load
//! reached capacity × (1 + `headroom`), unless that drops them all.

use std::time::Duration;

use crate::config::SaturationThresholds;
use crate::endpoints::Endpoint;

/// The detector.
#[derive(Debug, Clone, PartialEq)]
pub struct UtilizationDetector {
    thresholds: SaturationThresholds,
    staleness: Duration,
    /// Set for llm-d's `concurrency-detector`: saturation from the in-flight count instead.
    concurrency: Option<ConcurrencyLimits>,
}

/// What `concurrency-detector` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyMode {
    /// In-flight requests against `maxConcurrency`.
    Requests,
    /// In-flight uncached prompt tokens against `maxTokenConcurrency`.
    Tokens,
    /// Both; the larger pressure wins.
    Hybrid,
}

/// llm-d's `concurrency-detector` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConcurrencyLimits {
    /// What is counted.
    pub mode: ConcurrencyMode,
    /// Requests an endpoint is meant to hold (`maxConcurrency`).
    pub max_requests: f64,
    /// Tokens an endpoint is meant to hold (`maxTokenConcurrency`).
    pub max_tokens: f64,
    /// Burst allowed above them before the filter drops an endpoint.
    pub headroom: f64,
}

impl ConcurrencyLimits {
    /// (request ratio, token ratio) of one endpoint.
    fn ratios(&self, e: &Endpoint) -> (f64, f64) {
        (
            e.inflight.requests as f64 / self.max_requests,
            e.inflight.tokens as f64 / self.max_tokens,
        )
    }

    fn endpoint(&self, e: &Endpoint) -> f64 {
        let (r, t) = self.ratios(e);
        match self.mode {
            ConcurrencyMode::Requests => r,
            ConcurrencyMode::Tokens => t,
            ConcurrencyMode::Hybrid => r.max(t),
        }
    }

    fn pool(&self, eps: &[Endpoint]) -> f64 {
        let n = eps.len() as f64;
        let requests =
            eps.iter().map(|e| e.inflight.requests as f64).sum::<f64>() / (n * self.max_requests);
        let tokens =
            eps.iter().map(|e| e.inflight.tokens as f64).sum::<f64>() / (n * self.max_tokens);
        match self.mode {
            ConcurrencyMode::Requests => requests,
            ConcurrencyMode::Tokens => tokens,
            ConcurrencyMode::Hybrid => {
                let mean = eps.iter().map(|e| self.endpoint(e)).sum::<f64>() / n;
                mean.max(requests).max(tokens)
            }
        }
    }

    fn under_limit(&self, e: &Endpoint) -> bool {
        let (r, t) = self.ratios(e);
        let limit = 1.0 + self.headroom;
        match self.mode {
            ConcurrencyMode::Requests => r < limit,
            ConcurrencyMode::Tokens => t < limit,
            ConcurrencyMode::Hybrid => r < limit && t < limit,
        }
    }
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
            concurrency: None,
        }
    }

    /// llm-d's `concurrency-detector`.
    pub fn concurrency(limits: ConcurrencyLimits) -> Self {
        Self {
            concurrency: Some(limits),
            ..Self::default()
        }
    }

    /// What one more request adds to the saturation of `endpoints` endpoints (flow control
    /// counts requests released and not yet scheduled with it).
    pub fn per_request(&self, endpoints: usize) -> f64 {
        let n = endpoints.max(1) as f64;
        match self.concurrency {
            Some(c) if c.mode == ConcurrencyMode::Tokens => 0.0,
            Some(c) => 1.0 / (c.max_requests * n),
            None => 1.0 / (self.thresholds.queue_depth_threshold * n),
        }
    }

    /// The thresholds.
    pub fn thresholds(&self) -> &SaturationThresholds {
        &self.thresholds
    }

    /// The same thresholds for another scrape interval.
    pub fn for_scrape_interval(&self, scrape_interval: Duration) -> Self {
        Self {
            concurrency: self.concurrency,
            ..Self::new(self.thresholds.clone(), scrape_interval)
        }
    }

    /// Metrics older than this count as saturated.
    pub fn staleness(&self) -> Duration {
        self.staleness
    }

    /// One endpoint's saturation.
    pub fn endpoint(&self, e: &Endpoint) -> f64 {
        if let Some(c) = &self.concurrency {
            return c.endpoint(e);
        }
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
        if let Some(c) = &self.concurrency {
            return c.pool(candidates);
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
            .map(|e| match &self.concurrency {
                Some(c) => c.under_limit(e),
                None => e
                    .current_load(self.staleness)
                    .is_some_and(|l| l.waiting < q && l.kv_usage < kv),
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

    #[test]
    fn the_concurrency_detector_counts_what_is_in_flight() {
        let limits = |mode| ConcurrencyLimits {
            mode,
            max_requests: 4.0,
            max_tokens: 1_000.0,
            headroom: 0.5,
        };
        let mut eps: Vec<Endpoint> = (0..2).map(|i| test_endpoint(8000 + i)).collect();
        eps[0].inflight.requests = 6;
        eps[0].inflight.tokens = 100;
        eps[1].inflight.requests = 2;
        eps[1].inflight.tokens = 900;
        let r = UtilizationDetector::concurrency(limits(ConcurrencyMode::Requests));
        assert!((r.saturation(&eps) - 1.0).abs() < 1e-12, "8 of 2 × 4");
        assert_eq!(r.endpoint(&eps[0]), 1.5);
        // 6 requests reach 4 × 1.5: the first endpoint is dropped, not the second.
        assert_eq!(r.filter(eps.clone()).len(), 1);
        assert!((r.per_request(2) - 0.125).abs() < 1e-12);
        let t = UtilizationDetector::concurrency(limits(ConcurrencyMode::Tokens));
        assert!(
            (t.saturation(&eps) - 0.5).abs() < 1e-12,
            "1,000 of 2 × 1,000"
        );
        let h = UtilizationDetector::concurrency(limits(ConcurrencyMode::Hybrid));
        // Mean of the endpoints' larger ratios: (1.5 + 0.9) / 2 = 1.2.
        assert!((h.saturation(&eps) - 1.2).abs() < 1e-12);
        // Every endpoint at its limit: the filter keeps them all.
        eps[1].inflight.requests = 6;
        assert_eq!(r.filter(eps).len(), 2);
    }
}
