//! `active-request-scorer` (llm-d): scores by the requests this EPP routed to each candidate
//! and has not seen finish ([`crate::inflight`]): none scores 1, the busiest candidate 0, the
//! rest `(max − count) / max`. Unlike the queue scorers it needs no scrape, so it is right
//! the moment a decision is made; with several EPP replicas each sees only its own requests.
//!
//! Parameters: `requestTimeout` (Go duration, default `2m`: a request counted this long
//! without an end is dropped from the count), `inFlightLoadProducerName` (llm-d's newer
//! configs; the EPP has one in-flight count, so any name is accepted).
//!
//! llm-d takes the maximum over every endpoint it tracks; here it is over the candidates, so
//! a busy pod of another role (a prefill pod when decode pods are scored) does not compress
//! the candidates' scores.

use std::time::Duration;

use serde::Deserialize;

use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "active-request-scorer";

/// Parameters.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// How long an unfinished request is counted.
    #[serde(with = "humantime_serde::option")]
    pub request_timeout: Option<Duration>,
    /// The in-flight producer to read (accepted; there is one).
    pub in_flight_load_producer_name: Option<String>,
}

/// `active-request-scorer`.
#[derive(Debug, Default)]
pub struct ActiveRequestScorer;

impl Scorer for ActiveRequestScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let max = candidates
            .iter()
            .map(|e| e.inflight.requests)
            .max()
            .unwrap_or(0);
        candidates
            .iter()
            .map(|e| {
                let n = e.inflight.requests;
                if n == 0 || max == 0 {
                    1.0
                } else {
                    (max - n) as f64 / max as f64
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_endpoint;

    #[test]
    fn fewest_in_flight_scores_highest() {
        let mut eps: Vec<Endpoint> = (1..=3).map(test_endpoint).collect();
        eps[0].inflight.requests = 4;
        eps[1].inflight.requests = 1;
        let s = ActiveRequestScorer.score(&mut CycleState::for_test(), &eps);
        assert_eq!(s, vec![0.0, 0.75, 1.0]);
        let idle: Vec<Endpoint> = (1..=2).map(test_endpoint).collect();
        assert_eq!(
            ActiveRequestScorer.score(&mut CycleState::for_test(), &idle),
            vec![1.0, 1.0]
        );
    }
}
