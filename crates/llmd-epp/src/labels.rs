//! Label values that come from requests are bounded: the model name a client sends becomes a
//! `model_name` label value only for the first [`MAX_MODEL_LABELS`] distinct names, and the
//! fairness id (`x-llm-d-inference-fairness-id`) a `fairness_id` value only for the first
//! [`MAX_FAIRNESS_LABELS`]; later ones are folded into `other` (as llm-d does), so a client
//! cannot grow the metric registry without bound.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::RwLock;

/// Distinct model names kept as label values.
pub const MAX_MODEL_LABELS: usize = 1000;

/// The label value past the cap.
pub const OTHER: &str = "other";

/// Distinct fairness ids kept as label values.
pub const MAX_FAIRNESS_LABELS: usize = 1000;

static SEEN: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(|| RwLock::new(HashSet::new()));
static SEEN_FAIRNESS: LazyLock<RwLock<HashSet<String>>> =
    LazyLock::new(|| RwLock::new(HashSet::new()));

fn bounded(seen: &RwLock<HashSet<String>>, cap: usize, value: &str) -> String {
    if seen.read().contains(value) {
        return value.to_owned();
    }
    let mut seen = seen.write();
    if seen.contains(value) || seen.len() < cap {
        seen.insert(value.to_owned());
        value.to_owned()
    } else {
        OTHER.to_owned()
    }
}

/// The `model_name` label value for `model`.
pub fn model_label(model: &str) -> String {
    bounded(&SEEN, MAX_MODEL_LABELS, model)
}

/// The `fairness_id` label value for `id`.
pub fn fairness_label(id: &str) -> String {
    bounded(&SEEN_FAIRNESS, MAX_FAIRNESS_LABELS, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_models_are_other() {
        let base = SEEN.read().len();
        for i in 0..(MAX_MODEL_LABELS - base) {
            assert_eq!(model_label(&format!("m{i}")), format!("m{i}"));
        }
        assert_eq!(model_label("one-too-many"), OTHER);
        assert_eq!(model_label("m0"), "m0");
    }
}
