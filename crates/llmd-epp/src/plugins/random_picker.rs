//! `random-picker`: uniformly random candidates (the baseline with no information), up to
//! `maxNumOfEndpoints`.
//!
//! Parameters: `maxNumOfEndpoints` (1).

use super::Rng;
use crate::endpoints::Endpoint;
use crate::scheduling::Pick;

/// The llm-d type name.
pub const TYPE: &str = "random-picker";

/// Parameters (the same as the max-score picker's).
pub type Params = super::max_score_picker::Params;

/// `random-picker`.
#[derive(Debug)]
pub struct RandomPicker {
    max: usize,
    rng: Rng,
}

impl RandomPicker {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self {
            max: params.max_num_of_endpoints.max(1),
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
