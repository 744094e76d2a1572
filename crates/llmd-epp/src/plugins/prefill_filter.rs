//! `prefill-filter`: keeps pods whose role (`llm-d.ai/role`) is `prefill`. No parameters.

use crate::endpoints::{Endpoint, Role};
use crate::scheduling::{CycleState, Filter};

/// The llm-d type name.
pub const TYPE: &str = "prefill-filter";

/// `prefill-filter`.
#[derive(Debug, Default)]
pub struct PrefillFilter;

impl Filter for PrefillFilter {
    fn filter(&self, _cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        candidates
            .into_iter()
            .filter(|e| e.spec.role == Role::Prefill)
            .collect()
    }
}
