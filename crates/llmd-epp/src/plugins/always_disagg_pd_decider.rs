//! `always-disagg-pd-decider` (llm-d): every request gets a prefill pod. No parameters.

use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Decider};

/// The llm-d type name.
pub const TYPE: &str = "always-disagg-pd-decider";

/// `always-disagg-pd-decider`.
#[derive(Debug, Default)]
pub struct AlwaysDisaggPdDecider;

impl Decider for AlwaysDisaggPdDecider {
    fn disaggregate(&self, _cs: &CycleState<'_>, _decode: &Endpoint) -> bool {
        true
    }
}
