//! `max-score-picker`: the highest total score first, ties broken at random; up to
//! `maxNumOfEndpoints` endpoints, best first (the profile adds fallbacks after them).
//!
//! Parameters: `maxNumOfEndpoints` (1).

use serde::Deserialize;

use super::Rng;
use crate::endpoints::Endpoint;
use crate::scheduling::Pick;

/// The llm-d type name.
pub const TYPE: &str = "max-score-picker";

/// Parameters of the pickers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// How many endpoints the picker returns (at least 1).
    pub max_num_of_endpoints: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            max_num_of_endpoints: 1,
        }
    }
}

/// `max-score-picker`.
#[derive(Debug)]
pub struct MaxScorePicker {
    max: usize,
    rng: Rng,
}

impl MaxScorePicker {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self {
            max: params.max_num_of_endpoints.max(1),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_endpoint as ep;

    #[test]
    fn max_score_breaks_ties_at_random_and_returns_fallbacks() {
        let p = MaxScorePicker::new(Params {
            max_num_of_endpoints: 2,
        });
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
}
