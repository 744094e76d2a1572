//! `decode-filter` keeps pods whose role is `decode` or `both`; `prefill-filter` keeps pods
//! whose role is `prefill` (llm-d's role label `llm-d.ai/role`).

use super::{CycleState, Filter};
use crate::endpoints::{Endpoint, Role};

/// Filters by P/D role.
#[derive(Debug)]
pub struct RoleFilter {
    keep: &'static [Role],
}

impl RoleFilter {
    /// `prefill-filter`.
    pub fn prefill() -> Self {
        Self {
            keep: &[Role::Prefill],
        }
    }

    /// `decode-filter`.
    pub fn decode() -> Self {
        Self {
            keep: &[Role::Decode, Role::Both],
        }
    }
}

impl Filter for RoleFilter {
    fn filter(&self, _cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        candidates
            .into_iter()
            .filter(|e| self.keep.contains(&e.spec.role))
            .collect()
    }
}
