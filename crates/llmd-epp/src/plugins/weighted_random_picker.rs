//! `weighted-random-picker` (llm-d/GIE): picks up to `maxNumOfEndpoints` candidates at random
//! with probability proportional to their total score (A-Res weighted sampling without
//! replacement: each candidate's key is `U^(1/score)`, the largest keys win). When every score
//! is 0 the choice is uniform.
//!
//! Parameters: `maxNumOfEndpoints` (1).

use super::Rng;
use crate::endpoints::Endpoint;
use crate::scheduling::Pick;

/// The llm-d type name.
pub const TYPE: &str = "weighted-random-picker";

/// Parameters (the same as the max-score picker's).
pub type Params = super::max_score_picker::Params;

/// `weighted-random-picker`.
#[derive(Debug)]
pub struct WeightedRandomPicker {
    max: usize,
    rng: Rng,
}

impl WeightedRandomPicker {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self {
            max: params.max_num_of_endpoints.max(1),
            rng: Rng::seeded(),
        }
    }

    /// A uniform draw in (0, 1].
    fn unit(&self) -> f64 {
        ((self.rng.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

impl Pick for WeightedRandomPicker {
    fn pick(&self, scored: &[(Endpoint, f64)]) -> Vec<Endpoint> {
        let any_weight = scored.iter().any(|(_, s)| *s > 0.0);
        let mut keys: Vec<(f64, usize)> = scored
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                let u = self.unit();
                let key = if !any_weight {
                    u
                } else if *s > 0.0 {
                    u.powf(1.0 / s)
                } else {
                    -1.0
                };
                (key, i)
            })
            .collect();
        keys.sort_by(|a, b| b.0.total_cmp(&a.0));
        keys.into_iter()
            .take(self.max)
            .map(|(_, i)| scored[i].0.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_endpoint as ep;

    #[test]
    fn choices_follow_the_scores() {
        let p = WeightedRandomPicker::new(Params::default());
        let scored = vec![(ep(1), 3.0), (ep(2), 1.0), (ep(3), 0.0)];
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[usize::from(p.pick(&scored)[0].spec.port)] += 1;
        }
        assert_eq!(
            counts[3], 0,
            "a zero score is never picked while others are positive"
        );
        let share = f64::from(counts[1]) / 4000.0;
        assert!((0.70..0.80).contains(&share), "3:1 weights → ~75%: {share}");
        let zeros = vec![(ep(1), 0.0), (ep(2), 0.0)];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(p.pick(&zeros)[0].spec.port);
        }
        assert_eq!(seen.len(), 2, "all-zero scores: uniform");
    }
}
