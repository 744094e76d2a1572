//! `round-robin-picker` (ours; llm-d has none): the candidates in turn, in address order. The
//! baseline every benchmark compares against. No parameters.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::endpoints::Endpoint;
use crate::scheduling::Pick;

/// The type name.
pub const TYPE: &str = "round-robin-picker";

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
    use crate::plugins::test_endpoint as ep;

    #[test]
    fn round_robin_cycles() {
        let p = RoundRobinPicker::default();
        let scored = vec![(ep(2), 0.0), (ep(1), 0.0)];
        let ports: Vec<u16> = (0..4).map(|_| p.pick(&scored)[0].spec.port).collect();
        assert_eq!(ports, vec![1, 2, 1, 2]);
    }
}
