//! `decode-filter`: keeps pods whose role (`llm-d.ai/role`) is `decode` or `both`.
//! No parameters.

use crate::endpoints::{Endpoint, Role};
use crate::scheduling::{CycleState, Filter};

/// The llm-d type name.
pub const TYPE: &str = "decode-filter";

/// `decode-filter`.
#[derive(Debug, Default)]
pub struct DecodeFilter;

impl Filter for DecodeFilter {
    fn filter(&self, _cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        candidates
            .into_iter()
            .filter(|e| matches!(e.spec.role, Role::Decode | Role::Both))
            .collect()
    }
}
