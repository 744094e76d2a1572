//! Label values that come from requests are bounded: the model name a client sends becomes a
//! `model_name` label value only for the first [`MAX_MODEL_LABELS`] distinct names; later ones
//! are folded into `other` (as llm-d does), so a client cannot grow the metric registry without
//! bound.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::RwLock;

/// Distinct model names kept as label values.
pub const MAX_MODEL_LABELS: usize = 1000;

/// The label value past the cap.
pub const OTHER: &str = "other";

static SEEN: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(|| RwLock::new(HashSet::new()));

/// The `model_name` label value for `model`.
pub fn model_label(model: &str) -> String {
    if SEEN.read().contains(model) {
        return model.to_owned();
    }
    let mut seen = SEEN.write();
    if seen.contains(model) || seen.len() < MAX_MODEL_LABELS {
        seen.insert(model.to_owned());
        model.to_owned()
    } else {
        OTHER.to_owned()
    }
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
