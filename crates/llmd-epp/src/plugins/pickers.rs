//! Pickers.
//!
//! - `max-score-picker`: highest total score first, ties broken at random; returns up to
//!   `maxNumOfEndpoints` (default 1) endpoints, best first, the rest as fallbacks.
//! - `random-picker`: a uniformly random candidate (the baseline with no information).
//! - `round-robin-picker`: candidates in turn (the other baseline).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::Value;

use super::{Pick, param};
use crate::endpoints::Endpoint;

/// A small lock-free generator (SplitMix64) for tie breaks.
#[derive(Debug)]
struct Rng(AtomicU64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        Self(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn max_endpoints(params: &Option<Value>) -> usize {
    param(params, "maxNumOfEndpoints")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as usize
}

/// `max-score-picker`.
#[derive(Debug)]
pub struct MaxScorePicker {
    max: usize,
    rng: Rng,
}

impl MaxScorePicker {
    /// From parameters.
    pub fn new(params: &Option<Value>) -> Self {
        Self {
            max: max_endpoints(params),
            rng: Rng::seeded(),
        }
    }
}

impl Pick for MaxScorePicker {
    fn pick(&self, scored: &[(Endpoint, f64)]) -> Vec<Endpoint> {
        // Random keys break ties uniformly.
        let mut order: Vec<(f64, u64, usize)> = scored
            .iter()
            .enumerate()
            .map(|(i, (_, s))| (*s, self.rng.next(), i))
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        order
            .into_iter()
            .take(self.max)
            .map(|(_, _, i)| scored[i].0.clone())
            .collect()
    }
}

/// `random-picker`.
#[derive(Debug)]
pub struct RandomPicker {
    max: usize,
    rng: Rng,
}

impl RandomPicker {
    /// From parameters.
    pub fn new(params: &Option<Value>) -> Self {
        Self {
            max: max_endpoints(params),
            rng: Rng::seeded(),
        }
    }
}

impl Pick for RandomPicker {
    fn pick(&self, scored: &[(Endpoint, f64)]) -> Vec<Endpoint> {
        let mut order: Vec<(u64, usize)> =
            (0..scored.len()).map(|i| (self.rng.next(), i)).collect();
        order.sort_unstable();
        order
            .into_iter()
            .take(self.max)
            .map(|(_, i)| scored[i].0.clone())
            .collect()
    }
}

/// `round-robin-picker`.
#[derive(Debug, Default)]
pub struct RoundRobinPicker {
    next: AtomicUsize,
}

impl Pick for RoundRobinPicker {
    fn pick(&self, scored: &[(Endpoint, f64)]) -> Vec<Endpoint> {
        if scored.is_empty() {
            return Vec::new();
        }
        let mut sorted: Vec<&Endpoint> = scored.iter().map(|(e, _)| e).collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let i = self.next.fetch_add(1, Ordering::Relaxed) % sorted.len();
        vec![sorted[i].clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{EndpointSpec, Role};

    fn ep(n: u16) -> Endpoint {
        let spec = EndpointSpec {
            address: "10.0.0.1".into(),
            port: n,
            role: Role::Both,
            model: vec![],
            kv_events: None,
            kv_events_replay: None,
            metrics_port: None,
        };
        Endpoint {
            id: spec.host_port(),
            spec,
            load: None,
        }
    }

    #[test]
    fn max_score_breaks_ties_at_random_and_returns_fallbacks() {
        let p = MaxScorePicker::new(&Some(serde_json::json!({"maxNumOfEndpoints": 2})));
        let scored = vec![(ep(1), 0.5), (ep(2), 0.9), (ep(3), 0.9), (ep(4), 0.1)];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let picked = p.pick(&scored);
            assert_eq!(picked.len(), 2);
            assert!(picked.iter().all(|e| e.spec.port == 2 || e.spec.port == 3));
            firsts.insert(picked[0].spec.port);
        }
        assert_eq!(firsts.len(), 2, "ties are broken both ways");
    }

    #[test]
    fn round_robin_cycles() {
        let p = RoundRobinPicker::default();
        let scored = vec![(ep(2), 0.0), (ep(1), 0.0)];
        let ports: Vec<u16> = (0..4).map(|_| p.pick(&scored)[0].spec.port).collect();
        assert_eq!(ports, vec![1, 2, 1, 2]);
    }
}
