//! `lora-affinity-scorer` (GIE's, also registered by llm-d): sends a request for a LoRA adapter
//! where the adapter is already running, else where it can be loaded. The request's adapter is
//! its `model` (vLLM serves an adapter under its `--lora-modules` name); each candidate's
//! adapters come from its newest `vllm:lora_requests_info` sample ([`crate::lora`]):
//!
//! | the pod | score |
//! |---|---|
//! | runs the adapter (`running_lora_adapters`) | 1.0 |
//! | has a free slot (running + waiting adapters < `max_lora`) | 0.8 |
//! | has a request for the adapter waiting (`waiting_lora_adapters`), no free slot | 0.6 |
//! | none of these (slots full, or no LoRA metrics) | 0.0 |
//!
//! These are GIE's values and order (a free slot ranks above a waiting adapter). One thing
//! differs: GIE scores a request for the base model the same way (no pod runs it as an
//! adapter, so pods with a free slot score 0.8 and full ones 0), although the base model
//! needs no adapter slot. Here a request whose `model` is a base model of some candidate (the
//! `model_name` label of its vLLM queue gauges) scores 1.0 on every candidate: no preference.
//!
//! Metrics older than `staleAfterSeconds` (default 5; `--metrics-staleness-threshold` when not
//! set) count as none: an adapter request scores 0 there, a base-model request 1.
//!
//! Parameters: `staleAfterSeconds` (ours, as on the load scorers; GIE's scorer has none).

use serde::Deserialize;

use super::{STALE_AFTER_SECONDS, stale_after};
use crate::endpoints::Endpoint;
use crate::lora::ServedModels;
use crate::scheduling::{CycleState, Scorer};

/// The type name.
pub const TYPE: &str = "lora-affinity-scorer";

/// The adapter runs on the pod.
pub const ACTIVE: f64 = 1.0;
/// The pod has a free adapter slot.
pub const FREE_SLOT: f64 = 0.8;
/// A request for the adapter waits on the pod, which has no free slot.
pub const WAITING: f64 = 0.6;
/// Slots full, or no LoRA metrics.
pub const FULL: f64 = 0.0;

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// Scraped data older than this is not trusted (seconds).
    pub stale_after_seconds: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            stale_after_seconds: STALE_AFTER_SECONDS,
        }
    }
}

/// `lora-affinity-scorer`.
#[derive(Debug)]
pub struct LoraAffinityScorer {
    params: Params,
}

impl LoraAffinityScorer {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self { params }
    }
}

/// One pod's score for a request for `adapter`.
pub fn adapter_score(models: Option<&ServedModels>, adapter: &str) -> f64 {
    let Some(lora) = models.and_then(|m| m.lora.as_ref()) else {
        return FULL;
    };
    if lora.is_active(adapter) {
        ACTIVE
    } else if lora.has_free_slot() {
        FREE_SLOT
    } else if lora.is_waiting(adapter) {
        WAITING
    } else {
        FULL
    }
}

impl Scorer for LoraAffinityScorer {
    fn score(&self, cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let Some(model) = cs.request.map(|r| r.model.as_str()) else {
            return vec![1.0; candidates.len()];
        };
        let max_age = stale_after(self.params.stale_after_seconds);
        let models: Vec<Option<&ServedModels>> =
            candidates.iter().map(|e| e.fresh_models(max_age)).collect();
        let base = models
            .iter()
            .flatten()
            .any(|m| m.base.iter().any(|b| b == model));
        if base {
            return vec![1.0; candidates.len()];
        }
        models.iter().map(|m| adapter_score(*m, model)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraState;

    fn pod(running: &[&str], waiting: &[&str], max: Option<u32>) -> ServedModels {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        ServedModels {
            base: vec!["base".into()],
            lora: Some(LoraState {
                running: v(running),
                waiting: v(waiting),
                max_lora: max,
            }),
        }
    }

    #[test]
    fn gie_values_in_gie_order() {
        let s = |m: &ServedModels| adapter_score(Some(m), "sql");
        assert_eq!(s(&pod(&["sql", "chat"], &[], Some(2))), ACTIVE);
        assert_eq!(s(&pod(&["chat"], &[], Some(2))), FREE_SLOT);
        // A free slot ranks above the adapter waiting (GIE's order).
        assert_eq!(s(&pod(&[], &["sql"], Some(2))), FREE_SLOT);
        assert_eq!(s(&pod(&["chat"], &["sql"], Some(2))), WAITING);
        assert_eq!(s(&pod(&["chat"], &[], Some(1))), FULL);
        assert_eq!(s(&pod(&[], &[], None)), FULL, "no slot count");
        assert_eq!(adapter_score(None, "sql"), FULL, "no metrics");
        assert_eq!(
            adapter_score(
                Some(&ServedModels {
                    base: vec!["base".into()],
                    lora: None
                }),
                "sql"
            ),
            FULL,
            "no LoRA series"
        );
    }

    #[test]
    fn base_model_requests_score_all_pods_equal() {
        let mut a = crate::plugins::test_endpoint(1);
        let mut b = crate::plugins::test_endpoint(2);
        a.load = Some((Default::default(), std::time::Instant::now()));
        b.load = a.load;
        a.models = Some(std::sync::Arc::new(pod(&["chat"], &[], Some(1))));
        b.models = Some(std::sync::Arc::new(pod(&[], &[], Some(1))));
        let scorer = LoraAffinityScorer::new(Params::default());
        let score = |model: &str| {
            let req = crate::request::parse(
                "/v1/completions",
                format!(r#"{{"model":"{model}","prompt":"x"}}"#).as_bytes(),
            )
            .unwrap();
            let mut cs = CycleState::for_test();
            cs.request = Some(&req);
            scorer.score(&mut cs, &[a.clone(), b.clone()])
        };
        assert_eq!(score("base"), [1.0, 1.0]);
        assert_eq!(score("chat"), [ACTIVE, FREE_SLOT]);
        assert_eq!(score("sql"), [FULL, FREE_SLOT]);
    }
}
