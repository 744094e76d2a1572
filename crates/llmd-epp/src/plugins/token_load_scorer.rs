//! `token-load-scorer` (llm-d): scores by the uncached prompt tokens this EPP routed to each
//! candidate and that are not computed yet ([`crate::inflight`]): 0 tokens score 1,
//! `queueThresholdTokens` or more score 0, linear between. A finer signal than a request
//! count when prompt sizes vary.
//!
//! Parameters: `queueThresholdTokens` (default 4,194,304, llm-d's),
//! `inFlightLoadProducerName` (accepted; the EPP has one in-flight count).

use serde::Deserialize;

use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "token-load-scorer";

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// In-flight tokens that score 0.
    pub queue_threshold_tokens: u64,
    /// The in-flight producer to read (accepted; there is one).
    pub in_flight_load_producer_name: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            queue_threshold_tokens: 4_194_304,
            in_flight_load_producer_name: None,
        }
    }
}

/// `token-load-scorer`.
#[derive(Debug)]
pub struct TokenLoadScorer {
    threshold: u64,
}

impl TokenLoadScorer {
    /// From parameters (a zero threshold is refused by the registry).
    pub fn new(p: &Params) -> Self {
        Self {
            threshold: p.queue_threshold_tokens.max(1),
        }
    }
}

impl Scorer for TokenLoadScorer {
    fn score(&self, _cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        candidates
            .iter()
            .map(|e| 1.0 - e.inflight.tokens.min(self.threshold) as f64 / self.threshold as f64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_endpoint;

    #[test]
    fn linear_up_to_the_threshold() {
        let mut eps: Vec<Endpoint> = (1..=3).map(test_endpoint).collect();
        eps[0].inflight.tokens = 1_000;
        eps[1].inflight.tokens = 250;
        let s = TokenLoadScorer::new(&Params {
            queue_threshold_tokens: 500,
            in_flight_load_producer_name: None,
        })
        .score(&mut CycleState::for_test(), &eps);
        assert_eq!(s, vec![0.0, 0.5, 1.0]);
    }
}
